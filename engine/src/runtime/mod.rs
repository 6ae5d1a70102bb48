//! The replica runtime: stage threads, transport, durability coordinator.
