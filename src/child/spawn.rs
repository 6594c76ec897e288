//! Starting a generator process without copying the worker's address space, in a way that a
//! Ctrl-Z cannot hang.
//!
//! # Why not `std::process::Command`
//!
//! Not for speed: `Command` with `process_group(0)` and no `pre_exec` hook spawns with glibc's
//! `posix_spawn`, a `clone(CLONE_VM | CLONE_VFORK)` that copies nothing, and is as fast as
//! [`spawn`] (a `pre_exec` hook, the standard library's only way to set the parent-death signal,
//! makes it `fork` instead, which is slower: docs/BENCHMARKS.md, dispatch section).
//!
//! Because it **hangs on Ctrl-Z and `fg`**. A terminal's Ctrl-Z sends SIGTSTP to the worker's
//! process group; a child that is between `clone` and its own `setpgid` is still in that group,
//! and gets the signal too (pending, as the parent blocks all signals around the `clone`).
//! `posix_spawn`'s child unblocks it before `execve` and stops, in its new group, where the
//! SIGCONT of `fg` (sent to the worker's group) never reaches it; the spawning thread, suspended
//! until the child execs, waits for good, and the worker with it. Pressing Ctrl-Z then `fg` on a
//! worker spawning `true` generators hung it 4 times out of 4 with `Command` + `process_group`,
//! while this module's spawn survived 693 presses out of 693: its child discards the stop and
//! interrupt signals that were meant for the worker before it unblocks signals. Pinned by the
//! tests `a_stop_signal_to_the_worker_group_cannot_hang_a_spawn` (and its `#[ignore]`d
//! counterpart with `Command`, which hangs) and tests/stop_continue.rs.
//!
//! It also sets `PR_SET_PDEATHSIG = SIGKILL` in the child, so that every generator dies with a
//! worker killed by `kill -9`, which `posix_spawn` has no attribute for.
//!
//! # How
//!
//! [`spawn`] does what glibc's `posix_spawn` does, plus the parent-death signal:
//! `clone(CLONE_VM | CLONE_VFORK | SIGCHLD)` runs the child on a small stack of its own, in the
//! worker's memory (nothing is copied), while the calling thread is suspended until the child
//! has called `execve` (or `_exit`). Before `execve` the child only makes async-signal-safe
//! system calls on data prepared by the parent: it resets the signal handlers, sets the
//! parent-death signal, becomes the leader of a new process group, discards the signals sent to
//! the worker's group meanwhile, moves the pipe ends onto fds 0, 1 and 2, changes directory and
//! clears its signal mask. A failure there is reported to the parent through memory both share,
//! and [`spawn`] returns it as an error naming the step. [`spawn_detached`] is the same without
//! the parent-death signal and the pipes, for the guard process.
//!
//! The child's stack is mapped once per spawning thread, with an inaccessible guard page below
//! it ([`ChildStack`]): a child that outgrew it would die of SIGSEGV instead of writing over the
//! worker's memory.
//!
//! # Requirements on the calling process and thread
//!
//! * `PR_SET_PDEATHSIG` fires when the *thread* that spawned the child exits, not when the
//!   process does: spawn from long-lived threads (the worker's own threads), never from
//!   short-lived helper threads, or the generator is killed when the helper ends.
//! * As with any child, nothing else may reap it (see [`crate::child::groups::Group`], which
//!   owns it).
//! * The file descriptors that the worker opens without `O_CLOEXEC` are inherited by every
//!   generator (the standard library opens everything with it).
//!
//! Only Linux is supported (`clone`, `prctl`), on architectures whose stack grows downwards
//! (all the ones Rust supports on Linux but PA-RISC), with glibc 2.24 or newer: older `clone`
//! wrappers wrote the calling thread's cached pid and tid from a `CLONE_VM` child, that is into
//! the worker's memory ([`spawn`] refuses with a clear error under an older glibc). The child's
//! code relies on glibc's `sigaction`, `prctl`, `setpgid`, `dup2`, `chdir` and `execve` being
//! plain system calls without locks (musl's `sigaction` takes a lock for `SIGABRT`), and on the
//! binary being linked with immediate binding (Rust's default `-z now`), so that no lazy symbol
//! resolution runs in the child. Keep the child's code as small as it is: its stack is 32 KiB
//! (the `stack_use_is_small` test checks the margin).

use crate::child::groups::Group;
use std::cell::Cell;
use std::ffi::{CStr, CString, OsStr};
use std::fmt;
use std::fs::File;
use std::io;
use std::marker::PhantomData;
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicI32, AtomicU32, Ordering};

/// Size of the child's stack. The child runs one function with a few small locals and calls
/// only thin system-call wrappers: it uses under 1 KiB in a release build and under 3 KiB in a
/// debug build with the test instrumentation (measured by the `stack_use_is_small` test, which
/// fails when the margin drops below 4x). Mapped once per thread ([`ChildStack`]); only the
/// pages the child touches use memory.
const CHILD_STACK: usize = 32 * 1024;

/// Highest signal number of the kernel (`_NSIG - 1`): 64 on every Linux architecture but MIPS.
#[cfg(not(any(target_arch = "mips", target_arch = "mips64")))]
const MAX_SIGNAL: libc::c_int = 64;
#[cfg(any(target_arch = "mips", target_arch = "mips64"))]
const MAX_SIGNAL: libc::c_int = 127;

/// Size in bytes of the kernel's signal set, as `rt_sigprocmask` expects it.
const KERNEL_SIGSET_BYTES: usize = (MAX_SIGNAL as usize).div_ceil(8);

/// The worker's environment as `NAME=value` strings, captured once so that spawning many
/// processes with the same inherited environment does not copy it for each of them.
#[derive(Clone)]
pub struct Environ {
    /// Each variable as `NAME=value`, with the length of `NAME`.
    vars: Vec<(usize, CString)>,
}

impl Environ {
    /// The current environment of the process (later changes to it are not seen).
    pub fn capture() -> Self {
        Self::from_vars(std::env::vars_os())
    }

    /// An environment holding exactly `vars` (names with `=` or NUL, and values with NUL, are
    /// left out: they cannot be passed to a process).
    pub fn from_vars<K: AsRef<OsStr>, V: AsRef<OsStr>>(
        vars: impl IntoIterator<Item = (K, V)>,
    ) -> Self {
        let vars = vars
            .into_iter()
            .filter_map(|(k, v)| {
                let (k, v) = (k.as_ref().as_bytes(), v.as_ref().as_bytes());
                if k.is_empty() || k.contains(&b'=') {
                    return None;
                }
                let mut kv = Vec::with_capacity(k.len() + 1 + v.len() + 1);
                kv.extend_from_slice(k);
                kv.push(b'=');
                kv.extend_from_slice(v);
                Some((k.len(), CString::new(kv).ok()?))
            })
            .collect();
        Environ { vars }
    }
}

impl fmt::Debug for Environ {
    // Only the count: the values may hold secrets, and this ends up in debug output.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Environ({} variables)", self.vars.len())
    }
}

/// What to start.
#[derive(Debug, Clone, Copy)]
pub struct Command<'a> {
    /// The file to execute, as an absolute path (so the child's `chdir` cannot change it).
    pub program: &'a Path,
    /// The arguments, `argv[0]` included (usually the name the program was given as).
    pub argv: &'a [String],
    /// Variables added to `inherited` or replacing those of the same name; of two with the same
    /// name, the later one counts.
    pub env: &'a [(String, String)],
    /// The environment the child starts from.
    pub inherited: &'a Environ,
    /// The child's working directory.
    pub cwd: &'a Path,
}

/// A started generator: the worker's ends of its stdin, stdout and stderr pipes (non-blocking,
/// close-on-exec), and its process group.
#[derive(Debug)]
pub struct Child {
    pub stdin: File,
    pub stdout: File,
    pub stderr: File,
    /// Last, so that when a `Child` is dropped whole its stdin is closed before the group is
    /// killed and reaped.
    pub group: Group,
}

/// Starts `cmd` as the leader of a new process group, with `PR_SET_PDEATHSIG = SIGKILL`, the
/// signal handlers of the worker reset to their defaults (`SIGPIPE` too, which the worker
/// ignores; other ignored signals stay ignored, as with `std::process::Command`), an empty
/// signal mask, its stdin, stdout and stderr connected to pipes, in `cmd.cwd`. Like `execvp`,
/// a program that the kernel cannot execute (`ENOEXEC`: an executable script without `#!`) is
/// run by `/bin/sh`.
///
/// Returns once the child has called `execve`. See the module documentation for what the
/// calling thread must guarantee.
///
/// # Errors
///
/// When a pipe cannot be created, a string holds a NUL byte, `cmd.program` is not absolute, or
/// the child could not be started or set up (`chdir`, `execve`, ...); the message names the
/// failed step, `argv[0]`, the program and the working directory. No process is left behind.
pub fn spawn(cmd: &Command) -> io::Result<Child> {
    let context = |e| context(cmd, e);
    let (stdin_r, stdin_w) = pipe().map_err(context)?;
    let (stdout_r, stdout_w) = pipe().map_err(context)?;
    let (stderr_r, stderr_w) = pipe().map_err(context)?;
    let child_ends = [
        above_stdio(stdin_r).map_err(context)?,
        above_stdio(stdout_w).map_err(context)?,
        above_stdio(stderr_w).map_err(context)?,
    ];
    let result = start(cmd, child_ends.each_ref().map(AsRawFd::as_raw_fd), true);
    drop(child_ends); // The child has its copies; ours would hide the child's EOF from us.
    let pid = result?;
    // From here on, `group` kills and reaps the child if anything fails.
    let group = Group::new(pid);
    for (fd, what) in [
        (&stdin_w, "stdin"),
        (&stdout_r, "stdout"),
        (&stderr_r, "stderr"),
    ] {
        set_nonblocking(fd.as_raw_fd(), what)?;
    }
    Ok(Child {
        stdin: File::from(stdin_w),
        stdout: File::from(stdout_r),
        stderr: File::from(stderr_r),
        group,
    })
}

/// Starts `cmd` as [`spawn`] does, but for a helper that must outlive the calling thread and
/// the worker (the guard, [`crate::child::guard`]): no parent-death signal, stdout and stderr
/// on `/dev/null`, and no [`Group`]: nothing kills or reaps it when the handle is dropped, and
/// the caller is its only reaper. Returns its pid and the write end of its stdin pipe
/// (blocking, close-on-exec).
///
/// # Errors
///
/// As [`spawn`].
pub fn spawn_detached(cmd: &Command) -> io::Result<(libc::pid_t, File)> {
    let context = |e| context(cmd, e);
    let (stdin_r, stdin_w) = pipe().map_err(context)?;
    let null = File::options()
        .read(true)
        .write(true)
        .open("/dev/null")
        .map_err(|e| context(io::Error::new(e.kind(), format!("opening /dev/null: {e}"))))?;
    let child_ends = [
        above_stdio(stdin_r).map_err(context)?,
        above_stdio(OwnedFd::from(null)).map_err(context)?,
    ];
    let [stdin, null] = child_ends.each_ref().map(AsRawFd::as_raw_fd);
    let result = start(cmd, [stdin, null, null], false);
    drop(child_ends);
    Ok((result?, File::from(stdin_w)))
}

/// `e`, with what was being started, and where.
fn context(cmd: &Command, e: io::Error) -> io::Error {
    io::Error::new(
        e.kind(),
        format!(
            "spawning `{}` ({}) in {}: {e}",
            cmd.argv.first().map_or("", String::as_str),
            cmd.program.display(),
            cmd.cwd.display()
        ),
    )
}

/// Starts `cmd` with `fds` as its stdin, stdout and stderr (descriptors above 2) and returns
/// its pid once it has called `execve`; see [`spawn`]. `pdeathsig` sets the parent-death
/// signal. On error no process is left behind.
fn start(cmd: &Command, fds: [RawFd; 3], pdeathsig: bool) -> io::Result<libc::pid_t> {
    let context = |e| context(cmd, e);
    if cmd.argv.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "empty command: no program to run",
        ));
    }
    if !cmd.program.is_absolute() {
        return Err(context(io::Error::new(
            io::ErrorKind::InvalidInput,
            "the program is not an absolute path",
        )));
    }
    let path = c_string(cmd.program.as_os_str().as_bytes()).map_err(context)?;
    let cwd = c_string(cmd.cwd.as_os_str().as_bytes()).map_err(context)?;
    let argv = cmd
        .argv
        .iter()
        .map(|a| c_string(a.as_bytes()))
        .collect::<io::Result<Vec<_>>>()
        .map_err(context)?;
    let argv_ptrs = CStrArray::new(argv.iter().map(CString::as_c_str));
    let overrides = env_overrides(cmd.env).map_err(context)?;
    let envp = envp(cmd.inherited, &overrides);
    let mut stack = ChildStack::take().map_err(context)?;
    let mut child = Launch {
        path: &path,
        argv: &argv_ptrs,
        envp: &envp,
        cwd: &cwd,
        fds,
        pdeathsig,
        #[cfg(test)]
        overflow: false,
    };
    let mut result = launch(&mut stack, &child);
    // "Text file busy": a script written just before it is run can still be open for writing
    // in a process that another thread forked or spawned in the meantime (the copy of the
    // descriptor lives until that child execs). That lasts microseconds: try again a few times
    // (about 0.13 s in all) before calling it a failure.
    let mut pause = std::time::Duration::from_micros(500);
    for _ in 0..8 {
        if !matches!(
            result,
            Err(Failure {
                stage: Stage::Execve,
                errno: libc::ETXTBSY
            })
        ) {
            break;
        }
        std::thread::sleep(pause);
        pause *= 2;
        result = launch(&mut stack, &child);
    }
    if let Err(Failure {
        stage: Stage::Execve,
        errno: libc::ENOEXEC,
    }) = result
    {
        // What execvp does for a file the kernel does not recognize: run it as a shell script.
        let sh_argv = CStrArray::new(
            [SH, path.as_c_str()]
                .into_iter()
                .chain(argv.iter().skip(1).map(CString::as_c_str)),
        );
        child.path = SH;
        child.argv = &sh_argv;
        result = launch(&mut stack, &child);
    }
    stack.give_back();
    result.map_err(|f| context(f.into()))
}

const SH: &CStr = c"/bin/sh";

/// A null-terminated array of pointers to C strings that outlive it: the form `execve` takes
/// `argv` and `envp` in. Built only from `&CStr`s, so every pointer but the last points to a
/// NUL-terminated string, which the borrow keeps alive while the array is.
struct CStrArray<'a> {
    ptrs: Vec<*const libc::c_char>,
    strings: PhantomData<&'a CStr>,
}

impl<'a> CStrArray<'a> {
    fn new(strings: impl IntoIterator<Item = &'a CStr>) -> Self {
        let strings = strings.into_iter();
        // The upper bound: a filtered environment's lower one is 0.
        let (least, most) = strings.size_hint();
        let mut ptrs = Vec::with_capacity(most.unwrap_or(least) + 1);
        ptrs.extend(strings.map(CStr::as_ptr));
        ptrs.push(std::ptr::null());
        CStrArray {
            ptrs,
            strings: PhantomData,
        }
    }

    fn as_ptr(&self) -> *const *const libc::c_char {
        self.ptrs.as_ptr()
    }
}

/// The child's stack: [`CHILD_STACK`] bytes mapped read-write right above an inaccessible
/// guard page. The stack grows down, so a child that outgrows it faults on the guard page and
/// dies of `SIGSEGV` instead of writing over whatever the worker has mapped below it.
///
/// Each thread that spawns keeps one (in [`CACHED_STACK`]), mapped at its first spawn and
/// unmapped when the thread ends: a spawning thread is suspended while its child runs on the
/// stack, so it never needs two at once, and a spawn costs no allocation. Being created only
/// where [`check_libc`] passes, a `ChildStack` is also the proof that [`launch`] is safe to use
/// on this system.
struct ChildStack {
    /// The start of the mapping (the guard page), as mmap returned it.
    base: NonNull<libc::c_void>,
    /// The mapping's length: the guard page and the stack.
    len: usize,
}

thread_local! {
    /// The calling thread's [`ChildStack`], while no spawn of the thread is using it.
    static CACHED_STACK: Cell<Option<ChildStack>> = const { Cell::new(None) };
}

impl ChildStack {
    /// The calling thread's cached stack, or a new one if it has none.
    fn take() -> io::Result<ChildStack> {
        // `try_with` fails only while the thread's locals are being destroyed (a spawn from
        // another thread-local's destructor): a stack of its own then, unmapped after use.
        match CACHED_STACK.try_with(Cell::take) {
            Ok(Some(stack)) => Ok(stack),
            Ok(None) | Err(_) => ChildStack::new(),
        }
    }

    /// Puts the stack back in the calling thread's cache (or unmaps it if the thread is ending).
    fn give_back(self) {
        // A failed `try_with` drops the closure, and with it the stack.
        let _ = CACHED_STACK.try_with(move |cached| cached.set(Some(self)));
    }

    fn new() -> io::Result<ChildStack> {
        check_libc()?;
        let page = page_size();
        let len = CHILD_STACK.next_multiple_of(page) + page;
        let fail = |what: &str| {
            let e = io::Error::last_os_error();
            io::Error::new(e.kind(), format!("{what} the stack of the child: {e}"))
        };
        // SAFETY: a new anonymous private mapping, placed by the kernel where nothing else is;
        // MAP_NORESERVE because the child touches only its first few KiB.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(fail("mapping"));
        }
        let Some(base) = NonNull::new(base) else {
            return Err(io::Error::other("mmap returned a null stack"));
        };
        // From here on, dropping `stack` unmaps it.
        let stack = ChildStack { base, len };
        // SAFETY: the first page of the mapping just made, which nothing uses yet.
        if unsafe { libc::mprotect(base.as_ptr(), page, libc::PROT_NONE) } == -1 {
            return Err(fail("protecting the guard page of"));
        }
        Ok(stack)
    }

    /// The highest address of the stack, where the child's stack pointer starts (page-aligned,
    /// so 16-byte aligned as the ABI wants).
    fn top(&mut self) -> *mut libc::c_void {
        self.base.as_ptr().wrapping_byte_add(self.len)
    }
}

/// The size of a memory page (that of the guard page).
fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) })
        .ok()
        .filter(|p| p.is_power_of_two())
        .unwrap_or(4096)
}

impl Drop for ChildStack {
    fn drop(&mut self) {
        // SAFETY: the whole mapping made in `new`, which no child is using: a child runs on it
        // only inside `launch`, which borrows the stack mutably until the child has exec'd or
        // exited. The result is ignored: unmapping one's own mapping cannot fail.
        unsafe {
            libc::munmap(self.base.as_ptr(), self.len);
        }
    }
}

/// Refuses to spawn under a glibc older than 2.24, whose `clone` wrapper writes the calling
/// thread's cached pid and tid from a `CLONE_VM` child, into the worker's memory (glibc bug
/// 19957): a clear error instead of silent corruption.
fn check_libc() -> io::Result<()> {
    static VERSION: std::sync::OnceLock<Option<(u32, u32)>> = std::sync::OnceLock::new();
    let version = *VERSION.get_or_init(|| {
        // SAFETY: gnu_get_libc_version returns a pointer to a static NUL-terminated string.
        let v = unsafe { CStr::from_ptr(libc::gnu_get_libc_version()) };
        parse_libc_version(v.to_str().ok()?)
    });
    refuse_libc(version).map_or(Ok(()), Err)
}

/// The error for a glibc version too old to spawn safely.
fn refuse_libc(version: Option<(u32, u32)>) -> Option<io::Error> {
    let v = version.filter(|v| *v < (2, 24))?;
    Some(io::Error::new(
        io::ErrorKind::Unsupported,
        format!(
            "glibc {}.{} is too old to start generators safely (2.24 or newer is needed); \
             build and run shardrun on a newer system",
            v.0, v.1
        ),
    ))
}

/// `"2.36"` → `(2, 36)`.
fn parse_libc_version(v: &str) -> Option<(u32, u32)> {
    let mut parts = v.split('.');
    let major = parts.next()?.parse().ok()?;
    let minor = parts
        .next()?
        .trim_end_matches(|c: char| !c.is_ascii_digit())
        .parse()
        .ok()?;
    Some((major, minor))
}

fn c_string(bytes: impl Into<Vec<u8>>) -> io::Result<CString> {
    CString::new(bytes).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "{:?} contains a NUL byte",
                String::from_utf8_lossy(&e.into_vec())
            ),
        )
    })
}

/// `env` as `NAME=value` strings, the later of two with the same name only.
fn env_overrides(env: &[(String, String)]) -> io::Result<Vec<(usize, CString)>> {
    let mut out = Vec::with_capacity(env.len());
    for (i, (k, v)) in env.iter().enumerate() {
        if env
            .get(i + 1..)
            .unwrap_or_default()
            .iter()
            .any(|(l, _)| l == k)
        {
            continue;
        }
        out.push((k.len(), c_string(format!("{k}={v}"))?));
    }
    Ok(out)
}

/// The child's `envp`: `inherited` without the names that `overrides` sets, then `overrides`.
fn envp<'a>(inherited: &'a Environ, overrides: &'a [(usize, CString)]) -> CStrArray<'a> {
    fn name((len, kv): &(usize, CString)) -> &[u8] {
        kv.as_bytes().get(..*len).unwrap_or_default()
    }
    let kept = inherited
        .vars
        .iter()
        .filter(|var| !overrides.iter().any(|o| name(o) == name(var)));
    CStrArray::new(kept.chain(overrides).map(|(_, kv)| kv.as_c_str()))
}

/// A pipe, both ends close-on-exec, as (read end, write end).
fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: `fds` has room for the two descriptors that pipe2 writes.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } == -1 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(e.kind(), format!("creating a pipe: {e}")));
    }
    // SAFETY: both descriptors were just created by pipe2 and belong to nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// `fd`, moved to a number above 2 if it is 0, 1 or 2.
///
/// The child `dup2`s its three pipe ends onto 0, 1 and 2 in that order, which is only correct
/// if none of them already is one of those numbers (a stdout end that is fd 0 would be closed
/// by the `dup2` onto fd 0 before being moved). In a Rust program this never happens, because
/// the runtime opens `/dev/null` on any of 0, 1 and 2 that is closed at start-up, so new
/// descriptors are always above 2; this check keeps `spawn` correct when the library runs
/// under a host program that does not do that.
fn above_stdio(fd: OwnedFd) -> io::Result<OwnedFd> {
    if fd.as_raw_fd() > 2 {
        return Ok(fd);
    }
    // SAFETY: fcntl on a descriptor we own; F_DUPFD_CLOEXEC returns a new one or -1.
    let moved = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 3) };
    if moved == -1 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(e.kind(), format!("moving a pipe end: {e}")));
    }
    // SAFETY: `moved` was just created by fcntl and belongs to nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(moved) })
}

/// Sets `O_NONBLOCK` on the worker's end of a pipe (`what` names it in the error).
fn set_nonblocking(fd: RawFd, what: &str) -> io::Result<()> {
    // SAFETY: fcntl on a descriptor we own. F_SETFL replaces the status flags, and a fresh pipe
    // end has none that could be lost (the access mode is not a status flag).
    if unsafe { libc::fcntl(fd, libc::F_SETFL, libc::O_NONBLOCK) } == -1 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(
            e.kind(),
            format!("making the generator's {what} non-blocking: {e}"),
        ));
    }
    Ok(())
}

/// The step of the child's set-up that failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
enum Stage {
    /// Nothing failed (the child reached a successful `execve`).
    None = 0,
    Pdeathsig,
    Setpgid,
    Dup2,
    Chdir,
    Execve,
}

impl Stage {
    fn from_u32(n: u32) -> Stage {
        [
            Stage::Pdeathsig,
            Stage::Setpgid,
            Stage::Dup2,
            Stage::Chdir,
            Stage::Execve,
        ]
        .into_iter()
        .find(|s| *s as u32 == n)
        .unwrap_or(Stage::None)
    }

    fn name(self) -> &'static str {
        match self {
            Stage::None => "?",
            Stage::Pdeathsig => "prctl(PR_SET_PDEATHSIG)",
            Stage::Setpgid => "setpgid",
            Stage::Dup2 => "dup2",
            Stage::Chdir => "chdir",
            Stage::Execve => "execve",
        }
    }
}

/// Why a child could not be started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Failure {
    stage: Stage,
    errno: libc::c_int,
}

impl From<Failure> for io::Error {
    fn from(f: Failure) -> Self {
        let e = io::Error::from_raw_os_error(f.errno);
        match f.stage {
            Stage::None => io::Error::new(e.kind(), format!("clone: {e}")),
            stage => io::Error::new(e.kind(), format!("{}: {e}", stage.name())),
        }
    }
}

/// What the child reads, and where it reports a failure. Lives in the parent's frame of
/// [`launch`]; the child sees it through the memory it shares with the parent.
struct ChildArgs {
    path: *const libc::c_char,
    argv: *const *const libc::c_char,
    envp: *const *const libc::c_char,
    cwd: *const libc::c_char,
    /// The child's stdin, stdout and stderr, all above 2.
    fds: [RawFd; 3],
    /// Whether to set the parent-death signal.
    pdeathsig: bool,
    /// The parent's pid, to notice that it died before the parent-death signal was set.
    parent: libc::pid_t,
    /// The [`Stage`] that failed; written by the child only. Atomics, so that the child can
    /// write through a shared reference and the parent's compiler cannot assume the values
    /// unchanged across the `clone` call.
    stage: AtomicU32,
    /// The errno of the failure.
    errno: AtomicI32,
    /// Tests only: the signals that still had a handler just before `execve`, as a bit mask.
    #[cfg(test)]
    handled_at_exec: std::sync::atomic::AtomicU64,
    /// Tests only: see [`Launch`].
    #[cfg(test)]
    overflow: bool,
}

/// Blocks every signal in the calling thread, including the two that glibc reserves for itself
/// and leaves out of `sigfillset` and `pthread_sigmask`; returns the previous mask.
fn block_all_signals() -> MaybeUninit<libc::sigset_t> {
    let mut all = MaybeUninit::<libc::sigset_t>::uninit();
    let mut old = MaybeUninit::<libc::sigset_t>::zeroed();
    // SAFETY: `all` is filled with ones before use; rt_sigprocmask reads and writes the first
    // KERNEL_SIGSET_BYTES bytes of the two sets, which are larger (glibc's sigset_t is 128
    // bytes). It cannot fail with valid pointers, a valid `how` and the kernel's set size.
    unsafe {
        all.as_mut_ptr().write_bytes(0xff, 1);
        libc::syscall(
            libc::SYS_rt_sigprocmask,
            libc::SIG_SETMASK,
            all.as_ptr(),
            old.as_mut_ptr(),
            KERNEL_SIGSET_BYTES,
        );
    }
    old
}

/// Sets the calling thread's signal mask (the raw system call, for the same reason as above).
///
/// # Safety
///
/// `mask` must point to a valid signal set. Async-signal-safe: it is also used in the child.
unsafe fn set_signal_mask(mask: *const libc::sigset_t) {
    // SAFETY: per the contract, `mask` is readable for KERNEL_SIGSET_BYTES bytes.
    unsafe {
        libc::syscall(
            libc::SYS_rt_sigprocmask,
            libc::SIG_SETMASK,
            mask,
            std::ptr::null_mut::<libc::sigset_t>(),
            KERNEL_SIGSET_BYTES,
        );
    }
}

/// What [`launch`] starts; the strings and arrays are borrowed, so they outlive the child's
/// use of them (it ends when the child has exec'd or exited, before `launch` returns).
struct Launch<'a> {
    path: &'a CStr,
    argv: &'a CStrArray<'a>,
    envp: &'a CStrArray<'a>,
    cwd: &'a CStr,
    /// The child's stdin, stdout and stderr. Above 2 for the `dup2`s to be correct (see
    /// [`above_stdio`]); a descriptor that is not open makes the `dup2` step fail.
    fds: [RawFd; 3],
    /// Whether the child gets `PR_SET_PDEATHSIG = SIGKILL` (see [`spawn_detached`]).
    pdeathsig: bool,
    /// Tests only: the child recurses until its stack overflows.
    #[cfg(test)]
    overflow: bool,
}

/// Starts the child on `stack` and waits until it has called `execve` successfully (returns
/// its pid) or failed (reaps it and returns why).
///
/// Safe because its arguments carry what the child's use of the worker's memory needs: the
/// strings and their null-terminated arrays are borrowed for the whole call ([`CStrArray`]),
/// the stack mutably (no one else uses it while the child does), and a [`ChildStack`] exists
/// only under a glibc whose `clone` does not write into the worker's memory.
fn launch(stack: &mut ChildStack, child: &Launch) -> Result<libc::pid_t, Failure> {
    let args = ChildArgs {
        path: child.path.as_ptr(),
        argv: child.argv.as_ptr(),
        envp: child.envp.as_ptr(),
        cwd: child.cwd.as_ptr(),
        fds: child.fds,
        pdeathsig: child.pdeathsig,
        parent: std::process::id() as libc::pid_t,
        stage: AtomicU32::new(Stage::None as u32),
        errno: AtomicI32::new(0),
        #[cfg(test)]
        handled_at_exec: std::sync::atomic::AtomicU64::new(0),
        #[cfg(test)]
        overflow: child.overflow,
    };
    let top = stack.top();
    // No signal handler of the worker may run in the child: it would run on the child's small
    // stack, in the worker's memory, possibly taking a lock a suspended thread holds. Blocked
    // here, the signals are blocked in the child from its first instruction (the mask is
    // inherited); it resets the handlers before it unblocks them.
    let old_mask = block_all_signals();
    // SAFETY: what the child does with the worker's memory is safe because:
    // - CLONE_VFORK suspends this thread until the child has called execve or _exit (or died of
    //   a signal: the kernel releases the parent when the child lets go of the memory), so `args`,
    //   the strings and pointer arrays it points to (borrowed by this function), and `stack`
    //   (borrowed mutably, so nothing else uses it) stay alive and unchanged while the child
    //   uses them; nothing else refers to `stack`, and the child uses nothing but it and `args`.
    //   `top` is the page-aligned end of the stack's writable pages, with the guard page below
    //   them, so a child that outgrows them faults rather than writing outside them.
    // - The glibc is 2.24 or newer (a `ChildStack` exists only then): its `clone` wrapper does
    //   not write the parent's cached pid and tid from the child.
    // - CLONE_VM shares all memory with the worker, whose other threads keep running. The child
    //   therefore touches no memory but its stack and `args`: `child_main` and `child_setup`
    //   only read `args`, write its atomics, and make system calls through libc's thin
    //   wrappers; they do not allocate, take locks, or touch thread-local state of Rust
    //   (allocator, stdio, panics), any of which another thread may hold or be changing.
    //   Symbols are bound at load time (Rust links with `-z now`), so no lazy binding runs in
    //   the child either.
    // - The child runs with this thread's thread pointer, so libc's `errno` in the child is
    //   this (suspended) thread's errno: the child's failing calls overwrite it. Nothing here
    //   reads errno across the clone except right after it fails, when no child exists.
    // - The child gets its own copy of the file descriptor table and of the signal handlers
    //   (no CLONE_FILES, no CLONE_SIGHAND), so its dup2, close-on-exec and sigaction calls do
    //   not affect the worker.
    // - `child_main` never returns (execve or _exit), so the code of libc's clone wrapper that
    //   would run after it never does.
    // - SIGCHLD as the exit signal makes it an ordinary child that waitpid and pidfds see.
    let pid = unsafe {
        libc::clone(
            child_main,
            top,
            libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
            (&raw const args).cast_mut().cast::<libc::c_void>(),
        )
    };
    let clone_errno = io::Error::last_os_error().raw_os_error().unwrap_or(0);
    // SAFETY: `old_mask` was filled by rt_sigprocmask in `block_all_signals`.
    unsafe { set_signal_mask(old_mask.as_ptr()) };
    #[cfg(test)]
    tests::HANDLED_AT_EXEC.store(
        args.handled_at_exec.load(Ordering::Acquire),
        Ordering::Relaxed,
    );
    if pid == -1 {
        return Err(Failure {
            stage: Stage::None,
            errno: clone_errno,
        });
    }
    // The child has exec'd or exited by now (CLONE_VFORK); what it wrote is visible.
    let stage = Stage::from_u32(args.stage.load(Ordering::Acquire));
    if stage == Stage::None {
        return Ok(pid);
    }
    let failure = Failure {
        stage,
        errno: args.errno.load(Ordering::Acquire),
    };
    reap(pid);
    Err(failure)
}

/// Waits for the child `pid`, which failed before or in `execve` and has called `_exit`.
fn reap(pid: libc::pid_t) {
    let mut status = 0;
    // SAFETY: plain system call with a valid out pointer; `pid` is our unreaped child.
    while unsafe { libc::waitpid(pid, &mut status, 0) } == -1
        && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted
    {}
}

/// The child's entry point (see the SAFETY comment at the `clone` call in [`launch`]).
extern "C" fn child_main(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` is the `ChildArgs` of the `launch` call that created this child; it is
    // alive until this child execs or exits, and only read here (the atomics aside).
    let args = unsafe { &*arg.cast_const().cast::<ChildArgs>() };
    // SAFETY: the child runs before execve with the guarantees listed at the clone call.
    let (stage, errno) = unsafe { child_setup(args) };
    args.errno.store(errno, Ordering::Release);
    args.stage.store(stage as u32, Ordering::Release);
    // SAFETY: _exit ends the child at once, without exit handlers or stdio flushing (which
    // belong to the worker); the exit status is not used.
    unsafe { libc::_exit(127) }
}

/// The child's set-up, then `execve`; returns only on failure, with the step and its errno.
///
/// # Safety
///
/// Only for the child of [`launch`]: it changes the calling process's signal dispositions,
/// signal mask, process group, file descriptors and directory. Everything in it must stay
/// async-signal-safe and free of allocation, locks and panics (no indexing, no formatting):
/// see the SAFETY comment at the `clone` call.
unsafe fn child_setup(args: &ChildArgs) -> (Stage, libc::c_int) {
    // SAFETY: only system calls through libc's wrappers, on pointers into this frame or into
    // `args`, which the parent keeps alive.
    unsafe {
        let errno = || *libc::__errno_location();
        // A handler of the worker must never run in the child, so they go back to the
        // defaults before the signals are unblocked (exec would reset them anyway). Ignored
        // signals stay ignored across exec, as with std, except SIGPIPE, which the Rust
        // runtime ignores for its own sake and std resets for its children. glibc refuses to
        // touch the two signals it reserves (EINVAL); it only ever sends those to threads of
        // the worker (by thread id), never to this child.
        let mut dfl: libc::sigaction = std::mem::zeroed();
        dfl.sa_sigaction = libc::SIG_DFL;
        for sig in 1..=MAX_SIGNAL {
            let mut old: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(sig, std::ptr::null(), &mut old) == 0
                && old.sa_sigaction != libc::SIG_DFL
                && (old.sa_sigaction != libc::SIG_IGN || sig == libc::SIGPIPE)
            {
                libc::sigaction(sig, &dfl, std::ptr::null_mut());
            }
        }
        #[cfg(test)]
        if args.overflow {
            tests::overflow_the_stack();
        }
        if args.pdeathsig {
            if libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0 as libc::c_ulong,
                0 as libc::c_ulong,
                0 as libc::c_ulong,
            ) == -1
            {
                return (Stage::Pdeathsig, errno());
            }
            // The worker died before prctl, so the signal will never come. Its spawning thread
            // cannot have exited alone: it is suspended until this child execs.
            if libc::getppid() != args.parent {
                libc::_exit(1);
            }
        }
        // Its own process group, so one killpg reaches everything it starts. Done here, not by
        // the parent, so the group exists before anyone can learn the pid (the parent resumes
        // only after execve).
        if libc::setpgid(0, 0) == -1 {
            return (Stage::Setpgid, errno());
        }
        // Signals sent to the worker's process group before this point (Ctrl-C, Ctrl-Z from a
        // terminal) are pending here, blocked. They were meant for the worker, which gets them
        // too, not for a generator in a group of its own; unblocked, a SIGTSTP would stop this
        // child before execve, keeping the spawning thread suspended for good, and a SIGINT
        // would kill it. Setting SIG_IGN discards a pending signal; the default comes back after.
        let mut pending: libc::sigset_t = std::mem::zeroed();
        libc::syscall(
            libc::SYS_rt_sigpending,
            &mut pending as *mut libc::sigset_t,
            KERNEL_SIGSET_BYTES,
        );
        let mut ign: libc::sigaction = std::mem::zeroed();
        ign.sa_sigaction = libc::SIG_IGN;
        for sig in 1..=MAX_SIGNAL {
            let mut old: libc::sigaction = std::mem::zeroed();
            if libc::sigismember(&pending, sig) == 1
                && libc::sigaction(sig, std::ptr::null(), &mut old) == 0
                && old.sa_sigaction == libc::SIG_DFL
            {
                libc::sigaction(sig, &ign, std::ptr::null_mut());
                libc::sigaction(sig, &dfl, std::ptr::null_mut());
            }
        }
        // The sources are all above 2 (see `above_stdio`), so no dup2 overwrites a later
        // source. dup2 clears close-on-exec on the copy; the originals are closed by execve.
        for (target, fd) in (0..).zip(args.fds) {
            if libc::dup2(fd, target) == -1 {
                return (Stage::Dup2, errno());
            }
        }
        if libc::chdir(args.cwd) == -1 {
            return (Stage::Chdir, errno());
        }
        #[cfg(test)]
        tests::record_handlers(args);
        let empty: libc::sigset_t = std::mem::zeroed();
        set_signal_mask(&empty);
        libc::execve(args.path, args.argv, args.envp);
        (Stage::Execve, errno())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::unix::fs::PermissionsExt;
    use std::path::PathBuf;
    use std::sync::atomic::AtomicU64;
    use std::time::{Duration, Instant};

    /// The handler mask of the latest launch (see `handled_at_exec`); only meaningful in a
    /// test process that spawns from one thread (the subprocess tests).
    pub(super) static HANDLED_AT_EXEC: AtomicU64 = AtomicU64::new(0);

    /// In the child, right before execve: which signals still have a handler.
    ///
    /// # Safety
    ///
    /// As `child_setup`: system calls on locals only.
    pub(super) unsafe fn record_handlers(args: &ChildArgs) {
        let mut mask = 0u64;
        for sig in 1..=MAX_SIGNAL.min(64) {
            // SAFETY: sigaction reads into a local.
            let handled = unsafe {
                let mut old: libc::sigaction = std::mem::zeroed();
                libc::sigaction(sig, std::ptr::null(), &mut old) == 0
                    && old.sa_sigaction != libc::SIG_DFL
                    && old.sa_sigaction != libc::SIG_IGN
            };
            if handled {
                mask |= 1 << (sig - 1);
            }
        }
        args.handled_at_exec.store(mask, Ordering::Release);
    }

    fn strings(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    fn sh(script: &str) -> Vec<String> {
        strings(&["sh", "-c", script])
    }

    struct Run<'a> {
        program: &'a str,
        argv: Vec<String>,
        env: Vec<(String, String)>,
        inherited: Environ,
        cwd: PathBuf,
    }

    impl Run<'_> {
        fn new(argv: Vec<String>) -> Self {
            Run {
                program: "/bin/sh",
                argv,
                env: Vec::new(),
                inherited: Environ::capture(),
                cwd: PathBuf::from("/"),
            }
        }

        fn spawn(&self) -> io::Result<Child> {
            spawn(&Command {
                program: Path::new(self.program),
                argv: &self.argv,
                env: &self.env,
                inherited: &self.inherited,
                cwd: &self.cwd,
            })
        }
    }

    struct Done {
        status: libc::c_int,
        stdout: String,
        stderr: String,
    }

    /// Feeds `input`, collects stdout and stderr to EOF and the exit status. Small outputs
    /// only (read one after the other, blocking).
    fn finish(child: Child, input: &[u8]) -> Done {
        let Child {
            mut group,
            mut stdin,
            mut stdout,
            mut stderr,
        } = child;
        for f in [&stdin, &stdout, &stderr] {
            // SAFETY: fcntl on descriptors we own.
            unsafe { libc::fcntl(f.as_raw_fd(), libc::F_SETFL, 0) };
        }
        stdin.write_all(input).unwrap();
        drop(stdin);
        let mut out = String::new();
        stdout.read_to_string(&mut out).unwrap();
        let mut err = String::new();
        stderr.read_to_string(&mut err).unwrap();
        let status = wait_exit(&group);
        group.kill_and_reap().unwrap();
        Done {
            status,
            stdout: out,
            stderr: err,
        }
    }

    /// Waits (without reaping) for the leader of `group` to exit; returns its wait status.
    fn wait_exit(group: &Group) -> libc::c_int {
        let t = Instant::now();
        while !group.exited_nowait().unwrap() {
            assert!(t.elapsed() < Duration::from_secs(10), "child did not exit");
            std::thread::sleep(Duration::from_millis(2));
        }
        // SAFETY: an all-zero siginfo_t is valid; WNOWAIT leaves the child to `group`.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: plain system call with a valid out pointer.
        let r = unsafe {
            libc::waitid(
                libc::P_PID,
                group.pid() as libc::id_t,
                &mut info,
                libc::WEXITED | libc::WNOWAIT,
            )
        };
        assert_eq!(r, 0);
        // SAFETY: waitid filled `info` for an exited child.
        let (code, status) = unsafe { (info.si_code, info.si_status()) };
        if code == libc::CLD_EXITED {
            status << 8
        } else {
            status
        }
    }

    fn temp_dir(name: &str) -> PathBuf {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "spawn-test-{}-{}-{name}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// The children (zombies included) of the calling thread.
    fn my_children() -> Vec<libc::pid_t> {
        // SAFETY: plain system call.
        let tid = unsafe { libc::gettid() };
        let path = format!("/proc/self/task/{tid}/children");
        let text = std::fs::read_to_string(&path).unwrap();
        text.split_whitespace()
            .map(|p| p.parse().unwrap())
            .collect()
    }

    /// A field of /proc/<pid>/status, as a hex mask.
    fn status_mask(status: &str, field: &str) -> u64 {
        let line = status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .unwrap_or_else(|| panic!("no {field} in {status}"));
        u64::from_str_radix(line.trim(), 16).unwrap()
    }

    fn bit(sig: libc::c_int) -> u64 {
        1 << (sig - 1)
    }

    #[test]
    fn stdio_plumbing() {
        let input = "line one\nline two\n".repeat(100);
        let child = Run::new(sh("cat; echo to-stderr >&2; exit 3"))
            .spawn()
            .unwrap();
        let done = finish(child, input.as_bytes());
        assert_eq!(done.stdout, input);
        assert_eq!(done.stderr, "to-stderr\n");
        assert_eq!(done.status, 3 << 8);
    }

    #[test]
    fn worker_ends_are_nonblocking_and_close_on_exec() {
        let child = Run::new(sh("exit 0")).spawn().unwrap();
        for f in [&child.stdin, &child.stdout, &child.stderr] {
            // SAFETY: fcntl on descriptors we own.
            let (fl, fd) = unsafe {
                (
                    libc::fcntl(f.as_raw_fd(), libc::F_GETFL),
                    libc::fcntl(f.as_raw_fd(), libc::F_GETFD),
                )
            };
            assert_ne!(fl & libc::O_NONBLOCK, 0);
            assert_ne!(fd & libc::FD_CLOEXEC, 0);
        }
        finish(child, b"");
    }

    #[test]
    fn no_pipe_end_leaks_into_the_child() {
        // Descriptors this process opened without close-on-exec (inherited from whoever
        // started the tests) are passed on, by design; nothing else may be.
        let inheritable: Vec<RawFd> = std::fs::read_dir("/proc/self/fd")
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            // SAFETY: F_GETFD only reads the flags (-1 for a closed descriptor).
            .filter(|&fd| fd > 2 && unsafe { libc::fcntl(fd, libc::F_GETFD) } == 0)
            .collect();
        let child = Run {
            program: "/bin/ls",
            ..Run::new(strings(&["ls", "/proc/self/fd"]))
        }
        .spawn()
        .unwrap();
        let done = finish(child, b"");
        let extra: Vec<RawFd> = done
            .stdout
            .split_whitespace()
            .map(|fd| fd.parse().unwrap())
            .filter(|fd| *fd > 2 && !inheritable.contains(fd))
            .collect();
        // `ls` itself opens the directory it lists.
        assert_eq!(extra.len(), 1, "{}", done.stdout);
    }

    #[test]
    fn cwd_and_argv0() {
        let dir = temp_dir("cwd");
        // Without arguments after the script, sh's $0 is its argv[0].
        let mut run = Run::new(strings(&["my-name", "-c", "pwd; echo \"$0\""]));
        run.cwd = dir.clone();
        let done = finish(run.spawn().unwrap(), b"");
        let canonical = std::fs::canonicalize(&dir).unwrap();
        assert_eq!(done.stdout, format!("{}\nmy-name\n", canonical.display()));
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn env_overrides_and_inheritance() {
        let mut run = Run::new(strings(&["env"]));
        run.program = "/usr/bin/env";
        run.inherited = Environ::from_vars([("A", "1"), ("B", "2"), ("C", "x=y")]);
        run.env = vec![
            ("B".into(), "first".into()),
            ("D".into(), "4".into()),
            ("B".into(), "last".into()),
        ];
        let done = finish(run.spawn().unwrap(), b"");
        let mut got: Vec<&str> = done.stdout.lines().collect();
        got.sort();
        assert_eq!(got, ["A=1", "B=last", "C=x=y", "D=4"]);

        // The captured environment of the test process reaches the child.
        let mut run = Run::new(strings(&["env"]));
        run.program = "/usr/bin/env";
        let done = finish(run.spawn().unwrap(), b"");
        let path = std::env::var("PATH").unwrap();
        assert!(done.stdout.lines().any(|l| l == format!("PATH={path}")));
    }

    #[test]
    fn start_failures_name_the_step_and_leave_no_zombie() {
        let dir = temp_dir("fail");
        let plain = dir.join("plain");
        std::fs::write(&plain, "data").unwrap();
        std::fs::set_permissions(&plain, std::fs::Permissions::from_mode(0o644)).unwrap();
        let plain = plain.to_str().unwrap().to_string();
        let missing = format!("{}/missing", dir.display());
        let cases: [(&str, &Path, io::ErrorKind, &str); 3] = [
            (&missing, Path::new("/"), io::ErrorKind::NotFound, "execve"),
            (
                &plain,
                Path::new("/"),
                io::ErrorKind::PermissionDenied,
                "execve",
            ),
            (
                "/bin/sh",
                Path::new("/nonexistent-dir-for-spawn-test"),
                io::ErrorKind::NotFound,
                "chdir",
            ),
        ];
        // A thread of its own, so that its children are only this test's.
        std::thread::scope(|scope| {
            scope.spawn(|| {
                for (program, cwd, kind, stage) in cases {
                    let mut run = Run::new(strings(&["gen-name", "-c", "exit 0"]));
                    run.program = program;
                    run.cwd = cwd.to_path_buf();
                    let e = run.spawn().unwrap_err();
                    assert_eq!(e.kind(), kind, "{e}");
                    let msg = e.to_string();
                    let expected = format!(
                        "spawning `gen-name` ({program}) in {}: {stage}: ",
                        cwd.display()
                    );
                    assert!(msg.starts_with(&expected), "{msg}");
                    assert_eq!(my_children(), Vec::<libc::pid_t>::new(), "{msg}");
                }
                // The check sees children: a started one is listed until reaped.
                let child = Run::new(sh("exit 0")).spawn().unwrap();
                assert_eq!(my_children(), vec![child.group.pid()]);
                finish(child, b"");
                assert_eq!(my_children(), Vec::<libc::pid_t>::new());
            });
        });

        let mut run = Run::new(sh("exit 0"));
        run.program = "sh";
        let e = run.spawn().unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        let mut run = Run::new(vec!["sh".into(), "-c".into(), "a\0b".into()]);
        run.program = "/bin/sh";
        let e = run.spawn().unwrap_err();
        assert!(e.to_string().contains("NUL"), "{e}");
        assert!(Run::new(Vec::new()).spawn().is_err());
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn script_without_shebang_runs_in_sh() {
        let dir = temp_dir("script");
        let script = dir.join("gen");
        std::fs::write(&script, "echo \"from script $1\"\n").unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        let path = script.to_str().unwrap().to_string();
        let mut run = Run::new(strings(&["gen", "arg"]));
        run.program = &path;
        let done = finish(run.spawn().unwrap(), b"");
        assert_eq!(done.stdout, "from script arg\n");
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn own_process_group() {
        let child = Run::new(strings(&["cat"])).spawn().unwrap();
        let pid = child.group.pid();
        // SAFETY: plain system calls.
        let (pgid, ours) = unsafe { (libc::getpgid(pid), libc::getpgid(0)) };
        assert_eq!(pgid, pid);
        assert_ne!(ours, pid);
        finish(child, b"");
    }

    #[test]
    fn child_dies_with_the_spawning_thread() {
        // Spawned from a thread that then ends: the parent-death signal kills the child, while
        // the test process (its parent) lives on and nobody else signals it.
        let child = std::thread::spawn(|| {
            let mut run = Run::new(strings(&["sleep", "1000"]));
            run.program = "/bin/sleep";
            run.spawn().unwrap()
        })
        .join()
        .unwrap();
        let status = wait_exit(&child.group);
        assert!(
            libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGKILL,
            "{status:#x}"
        );
        finish(child, b"");
    }

    #[test]
    fn many_concurrent_spawns() {
        let threads: Vec<_> = (0..4)
            .map(|t| {
                std::thread::spawn(move || {
                    for i in 0..100 {
                        let mut run = Run::new(sh("read -r x; echo \"$x $0\""));
                        run.argv.push(format!("t{t}"));
                        let done = finish(run.spawn().unwrap(), format!("{i}\n").as_bytes());
                        assert_eq!(done.stdout, format!("{i} t{t}\n"));
                        assert_eq!(done.status, 0);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
    }

    #[test]
    fn a_script_still_open_for_writing_briefly_is_run_once_it_is_closed() {
        let dir = temp_dir("txtbsy");
        let script = dir.join("gen.sh");
        let mut writer = std::fs::File::create(&script).unwrap();
        writer.write_all(b"#!/bin/sh\necho ran\n").unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        // Still open for writing when the spawn starts, closed 20 ms later.
        let closer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            drop(writer);
        });
        let mut run = Run::new(vec!["gen.sh".into()]);
        let program = script.to_string_lossy().into_owned();
        run.program = &program;
        let done = finish(run.spawn().expect("runs once the writer is closed"), b"");
        closer.join().unwrap();
        assert_eq!(done.stdout, "ran\n");
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn old_glibc_versions_are_recognized() {
        assert_eq!(parse_libc_version("2.36"), Some((2, 36)));
        assert_eq!(parse_libc_version("2.17"), Some((2, 17)));
        assert_eq!(parse_libc_version("2.39.9000"), Some((2, 39)));
        assert_eq!(parse_libc_version("garbage"), None);
        let e = refuse_libc(Some((2, 17)))
            .expect("2.17 is refused")
            .to_string();
        assert!(e.contains("glibc 2.17") && e.contains("2.24"), "{e}");
        assert!(refuse_libc(Some((2, 24))).is_none());
        assert!(refuse_libc(Some((3, 0))).is_none());
        assert!(
            refuse_libc(None).is_none(),
            "an unknown version is not refused"
        );
        check_libc().expect("this machine's glibc is recent enough");
    }

    /// `/bin/true` with no environment, started on `stack` with stdin, stdout and stderr on
    /// the ends of a pipe; returns what `launch` returned.
    fn launch_true(stack: &mut ChildStack, overflow: bool) -> Result<libc::pid_t, Failure> {
        let argv = CStrArray::new([c"true"]);
        let envp = CStrArray::new([]);
        let (r, w) = pipe().unwrap();
        launch(
            stack,
            &Launch {
                path: c"/bin/true",
                argv: &argv,
                envp: &envp,
                cwd: c"/",
                fds: [r.as_raw_fd(), w.as_raw_fd(), w.as_raw_fd()],
                pdeathsig: true,
                overflow,
            },
        )
    }

    #[test]
    fn stack_use_is_small() {
        const PATTERN: u8 = 0xa5;
        let mut stack = ChildStack::new().unwrap();
        let bottom = stack.base.as_ptr().cast::<u8>().wrapping_add(page_size());
        let size = stack.len - page_size();
        assert!(size >= CHILD_STACK);
        // SAFETY: the writable pages of the mapping, which nothing else uses.
        unsafe { bottom.write_bytes(PATTERN, size) };
        let pid = launch_true(&mut stack, false).unwrap();
        reap(pid);
        // SAFETY: the same pages, all initialized above; the child only wrote bytes.
        let bytes = unsafe { std::slice::from_raw_parts(bottom, size) };
        let used = size - bytes.iter().take_while(|&&b| b == PATTERN).count();
        assert!(
            used < CHILD_STACK / 4,
            "the child used {used} of its {CHILD_STACK} bytes of stack"
        );
    }

    /// Called in the child by the `overflow` hook: recurses, a few hundred bytes of stack per
    /// call, until the stack ends. Core dumps are off first: a dump would write the worker's
    /// whole memory (shared with the child) to a file.
    pub(super) fn overflow_the_stack() {
        let none = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: plain system call on a local.
        unsafe { libc::setrlimit(libc::RLIMIT_CORE, &none) };
        fn deeper(depth: u64) -> u64 {
            let frame = std::hint::black_box([depth; 32]);
            if std::hint::black_box(depth) == u64::MAX {
                return 0;
            }
            deeper(depth + 1).wrapping_add(frame[31])
        }
        std::hint::black_box(deeper(0));
    }

    /// Regression test: the child's stack was a heap allocation, so a child that outgrew it
    /// wrote silently over the worker's heap below it. It now faults on the guard page: the
    /// child dies of SIGSEGV, and the spawning thread resumes unharmed.
    #[test]
    fn a_child_that_overflows_its_stack_dies_of_sigsegv() {
        let mut stack = ChildStack::new().unwrap();
        let below = stack.base.as_ptr() as usize;
        let (start, perms) = mapping_of(below);
        assert_eq!(
            perms, "---p",
            "the page below the stack is not a guard page"
        );
        assert!(start <= below);
        assert_eq!(mapping_of(below + page_size()).1, "rw-p");
        // A child that dies before execve leaves no failure behind: launch returns its pid.
        let pid = launch_true(&mut stack, true).expect("the child was started");
        let mut status = 0;
        // SAFETY: plain system call on our unreaped child.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        assert!(
            libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGSEGV,
            "{status:#x}"
        );
        // The stack still works for the next child.
        let pid = launch_true(&mut stack, false).unwrap();
        reap(pid);
    }

    /// The start and permissions (`rw-p`) of the mapping of this process holding `addr`.
    fn mapping_of(addr: usize) -> (usize, String) {
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
        maps.lines()
            .find_map(|line| {
                let mut fields = line.split_whitespace();
                let (start, end) = fields.next()?.split_once('-')?;
                let start = usize::from_str_radix(start, 16).ok()?;
                let end = usize::from_str_radix(end, 16).ok()?;
                (start..end)
                    .contains(&addr)
                    .then(|| (start, fields.next().unwrap_or("").to_string()))
            })
            .unwrap_or_else(|| panic!("no mapping holds {addr:#x}:\n{maps}"))
    }

    #[test]
    fn each_thread_keeps_one_stack() {
        let stack_of_this_thread = || {
            let stack = ChildStack::take().unwrap();
            let base = stack.base;
            stack.give_back();
            base
        };
        let first = stack_of_this_thread();
        assert_eq!(stack_of_this_thread(), first, "the stack is cached");
        let other = std::thread::spawn(move || {
            let base = stack_of_this_thread().as_ptr() as usize;
            assert_eq!(mapping_of(base).1, "---p");
            base
        })
        .join()
        .unwrap();
        assert_ne!(other, first.as_ptr() as usize);
    }

    const HELPER_ENV: &str = "SHARDRUN_SPAWN_TEST_HELPER";

    /// Runs the test `name` in a fresh process of this test binary, with HELPER_ENV set, so
    /// that it can change process-wide signal dispositions without affecting other tests.
    fn in_subprocess(name: &str) {
        let exe = std::env::current_exe().unwrap();
        let test_path = module_path!()
            .split_once("::")
            .map_or(module_path!(), |(_, rest)| rest);
        let out = std::process::Command::new(exe)
            .args([
                "--exact",
                &format!("{test_path}::{name}"),
                "--nocapture",
                "--test-threads=1",
            ])
            .env(HELPER_ENV, "1")
            .output()
            .unwrap();
        assert!(
            out.status.success() && String::from_utf8_lossy(&out.stdout).contains("1 passed"),
            "{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    extern "C" fn noop_handler(_: libc::c_int) {}

    /// Not a test on its own: the body of `signal_state_of_the_child`.
    #[test]
    fn signal_state_helper() {
        if std::env::var_os(HELPER_ENV).is_none() {
            return;
        }
        // SAFETY: changes this helper process's dispositions and this thread's mask; nothing
        // else runs in it.
        unsafe {
            let mut act: libc::sigaction = std::mem::zeroed();
            act.sa_sigaction = noop_handler as *const () as libc::sighandler_t;
            for sig in [libc::SIGUSR1, libc::SIGTERM, libc::SIGRTMAX()] {
                assert_eq!(libc::sigaction(sig, &act, std::ptr::null_mut()), 0);
            }
            act.sa_sigaction = libc::SIG_IGN;
            assert_eq!(
                libc::sigaction(libc::SIGUSR2, &act, std::ptr::null_mut()),
                0
            );
            let mut block: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut block);
            libc::sigaddset(&mut block, libc::SIGHUP);
            libc::sigaddset(&mut block, libc::SIGUSR1);
            assert_eq!(
                libc::pthread_sigmask(libc::SIG_BLOCK, &block, std::ptr::null_mut()),
                0
            );
        }
        let mask_now = || {
            // SAFETY: an all-zero sigset_t is valid; pthread_sigmask only reads the mask here.
            unsafe {
                let mut m: libc::sigset_t = std::mem::zeroed();
                libc::pthread_sigmask(libc::SIG_BLOCK, std::ptr::null(), &mut m);
                [libc::SIGHUP, libc::SIGUSR1, libc::SIGUSR2, libc::SIGINT]
                    .map(|s| libc::sigismember(&m, s))
            }
        };
        let before = mask_now();
        let mut run = Run::new(strings(&["cat", "/proc/self/status"]));
        run.program = "/bin/cat";
        let done = finish(run.spawn().unwrap(), b"");
        assert_eq!(mask_now(), before, "the worker's mask is restored");
        // Just before execve, no handler was left.
        assert_eq!(HANDLED_AT_EXEC.load(Ordering::Relaxed), 0);
        let status = done.stdout;
        assert_eq!(status_mask(&status, "SigBlk:"), 0, "{status}");
        let ignored = status_mask(&status, "SigIgn:");
        assert_ne!(ignored & bit(libc::SIGUSR2), 0, "ignored stays ignored");
        assert_eq!(ignored & bit(libc::SIGPIPE), 0, "SIGPIPE back to default");
        assert_eq!(ignored & bit(libc::SIGUSR1), 0);
        assert_eq!(status_mask(&status, "SigCgt:"), 0);
    }

    #[test]
    fn signal_state_of_the_child() {
        in_subprocess("signal_state_helper");
    }

    /// Spawns `true` 600 times from two threads with `spawn_true`, which returns its exit
    /// status: the body of the stop-signal tests below.
    fn spawn_true_many_times(spawn_true: fn() -> i32) {
        let threads: Vec<_> = (0..2)
            .map(|_| {
                std::thread::spawn(move || {
                    for _ in 0..300 {
                        assert_eq!(spawn_true(), 0);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
    }

    /// Not a test on its own: the body of `a_stop_signal_to_the_worker_group_cannot_hang_a_spawn`.
    #[test]
    fn stop_signals_helper() {
        if std::env::var_os(HELPER_ENV).is_none() {
            return;
        }
        spawn_true_many_times(|| {
            let mut run = Run::new(strings(&["true"]));
            run.program = "/bin/true";
            finish(run.spawn().unwrap(), b"").status
        });
    }

    /// Not a test on its own: the body of `std_command_with_process_group_hangs_on_stop_signals`.
    #[test]
    fn std_stop_signals_helper() {
        use std::os::unix::process::{CommandExt, ExitStatusExt};
        if std::env::var_os(HELPER_ENV).is_none() {
            return;
        }
        spawn_true_many_times(|| {
            std::process::Command::new("/bin/true")
                .process_group(0)
                .stdin(std::process::Stdio::null())
                .status()
                .unwrap()
                .into_raw()
        });
    }

    /// Runs the test `helper` in a subprocess leading a process group of its own, and stops and
    /// continues that group (SIGTSTP, then SIGCONT, as a terminal's Ctrl-Z and `fg` do) until it
    /// exits. Panics if it is still running after 30 s, or fails.
    fn stop_and_continue_until_done(helper: &str) {
        use std::os::unix::process::CommandExt;
        let exe = std::env::current_exe().unwrap();
        let test_path = module_path!()
            .split_once("::")
            .map_or(module_path!(), |(_, rest)| rest);
        let mut helper = std::process::Command::new(exe)
            .args([
                "--exact",
                &format!("{test_path}::{helper}"),
                "--nocapture",
                "--test-threads=1",
            ])
            .env(HELPER_ENV, "1")
            .process_group(0)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let group = helper.id() as libc::pid_t;
        let started = Instant::now();
        let mut rounds = 0;
        let status = loop {
            if let Some(status) = helper.try_wait().unwrap() {
                break status;
            }
            if started.elapsed() > Duration::from_secs(30) {
                // SAFETY: kill(2) of the helper's own group.
                unsafe { libc::killpg(group, libc::SIGKILL) };
                let _ = helper.wait();
                panic!("spawning hung while the worker was stopped and continued ({rounds} times)");
            }
            // SAFETY: kill(2) of the helper's own group, which it leads.
            unsafe {
                libc::killpg(group, libc::SIGTSTP);
                std::thread::sleep(Duration::from_millis(2));
                libc::killpg(group, libc::SIGCONT);
            }
            rounds += 1;
            std::thread::sleep(Duration::from_millis(1));
        };
        let out = helper.wait_with_output().unwrap();
        assert!(
            status.success() && String::from_utf8_lossy(&out.stdout).contains("1 passed"),
            "{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Ctrl-Z sends SIGTSTP to the worker's process group. A child that is between `clone` and
    /// its own `setpgid` gets it too (blocked, so pending); if it stopped before `execve` it
    /// would keep its spawning thread suspended for good (`fg` continues the worker's group, not
    /// the child's). The child discards such signals: a worker stopped and continued over and
    /// over while spawning must finish.
    #[test]
    fn a_stop_signal_to_the_worker_group_cannot_hang_a_spawn() {
        stop_and_continue_until_done("stop_signals_helper");
    }

    /// The same with `std::process::Command` and `process_group(0)` (glibc's `posix_spawn` with
    /// `POSIX_SPAWN_SETPGROUP`): its child unblocks the pending SIGTSTP before `execve`, stops
    /// in its new group, which the SIGCONT does not reach, and the spawning thread waits for it
    /// for good. This test fails (hangs until its 30 s bound): it shows why this module exists.
    #[test]
    #[ignore = "fails by design: std's Command + process_group hangs when stopped and continued"]
    fn std_command_with_process_group_hangs_on_stop_signals() {
        stop_and_continue_until_done("std_stop_signals_helper");
    }
}
