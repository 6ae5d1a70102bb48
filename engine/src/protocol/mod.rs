//! The ordering protocol: sans-IO state machines for BFT and crash mode.
