//! One visitor connection's life on the public listeners: the worker threads it runs on, how
//! idleness is detected, and how it ends (a graceful close when idle or stopping).

pub mod close;
pub mod idle;
pub mod workers;
