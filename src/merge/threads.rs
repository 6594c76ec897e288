//! The shard-parallel steps of a merge (scanning manifests, verifying checksums): each shard on
//! one of up to one thread per core, results in shard order.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

/// `f(item)` for every item, on up to one thread per core (at most 8), in any order; the
/// results in the items' order. Without another thread (a process limit), the calling thread
/// does all the work.
pub(super) fn each_on_threads<I: Sync, T: Send>(
    name: &str,
    items: &[I],
    f: impl Fn(&I) -> T + Sync,
) -> Vec<T> {
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, 8)
        .min(items.len());
    let next = AtomicUsize::new(0);
    let done: Mutex<Vec<(usize, T)>> = Mutex::new(Vec::with_capacity(items.len()));
    let work = || loop {
        let i = next.fetch_add(1, Ordering::Relaxed);
        let Some(item) = items.get(i) else { break };
        let result = f(item);
        done.lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .push((i, result));
    };
    std::thread::scope(|scope| {
        for _ in 1..threads {
            if std::thread::Builder::new()
                .name(name.into())
                .spawn_scoped(scope, work)
                .is_err()
            {
                break;
            }
        }
        work();
    });
    let mut done = done.into_inner().unwrap_or_else(|p| p.into_inner());
    done.sort_by_key(|(i, _)| *i);
    done.into_iter().map(|(_, r)| r).collect()
}
