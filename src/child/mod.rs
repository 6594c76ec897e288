//! Child processes: the spawn primitive, supervision of one attempt (poll, exit, timeouts),
//! process groups and the guard process that kills them if the worker dies, /proc readings,
//! signal handling and the bounded capture of stderr.

pub mod groups;
pub mod guard;
pub mod proc_info;
pub mod signals;
pub mod spawn;
pub mod stderr_cap;
pub mod supervise;
