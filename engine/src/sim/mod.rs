//! The deterministic simulator: whole clusters in one process under one seed.
