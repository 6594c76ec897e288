//! Child processes: the spawn primitive, supervision of one attempt (poll, exit, timeouts),
//! process groups and the guard process that kills them if the worker dies, /proc readings,
//! signal handling and the bounded capture of stderr.

pub(crate) mod groups;
pub mod guard;
pub(crate) mod proc_info;
pub(crate) mod signals;
pub(crate) mod spawn;
pub(crate) mod stderr_cap;
pub(crate) mod supervise;
