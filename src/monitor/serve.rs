//! `monitor --serve [ADDR:]PORT`: the run live in a browser.
//!
//! One thread reads the logs (incrementally, through the same [`Monitor`] as the terminal
//! display) every `--interval` and publishes the snapshot, serialized once, to every client: many
//! open tabs never multiply the log reading, only the bytes sent. The server is read-only and
//! serves a fixed set of paths, all from memory (the page's files are compiled in); no part of
//! a request reaches the file system.
//!
//! Everything a client can make the server hold is bounded: the connections at once
//! ([`MAX_CONNECTIONS`], more are answered 503 and closed), the request head's size
//! ([`MAX_HEAD`]) and the time it may take to arrive ([`REQUEST_DEADLINE`], whatever the pace:
//! a client sending a byte now and then is cut off too), the time a write may block
//! ([`WRITE_TIMEOUT`]: an event stream whose reader stopped reading is closed). Each connection
//! serves one request (`Connection: close`).

use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::failures::{shard_failures, FailedItem, Failures};
use super::{Monitor, Snapshot, State};
use crate::error::{Error, Result};
use crate::run::paths::RunPaths;

/// Connections served at once (page loads, API calls and event streams together).
pub const MAX_CONNECTIONS: usize = 64;
/// The most bytes of a request head (request line and headers).
pub const MAX_HEAD: usize = 8 * 1024;
/// The time a whole request head may take to arrive.
pub const REQUEST_DEADLINE: Duration = Duration::from_secs(10);
/// The time one write to a client may block.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// An event stream with no new snapshot gets a comment this often (a gone client is noticed).
const KEEPALIVE: Duration = Duration::from_secs(15);
/// Failed items sent with each event (all of them are at `/api/failures`).
const FAILURES_SHOWN: usize = 500;
/// Points of the progress chart kept; past it, every other one is dropped and new points are
/// taken half as often, so a run of days keeps its whole shape in bounded memory.
const HISTORY_POINTS: usize = 1000;
/// The thread of each connection needs little: it parses a head of at most 8 KiB.
const CONNECTION_STACK: usize = 256 * 1024;

const INDEX_HTML: &str = include_str!("dashboard/index.html");
const APP_JS: &str = include_str!("dashboard/app.js");
const APP_CSS: &str = include_str!("dashboard/app.css");

/// `--serve`'s value: `PORT` (on 127.0.0.1) or `ADDR:PORT` (`0.0.0.0:8080`, `[::1]:8080`).
pub fn parse_addr(s: &str) -> Result<SocketAddr> {
    if let Ok(port) = s.parse::<u16>() {
        return Ok(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port));
    }
    s.parse::<SocketAddr>().map_err(|_| {
        Error::usage(format!(
            "--serve takes PORT (served on 127.0.0.1) or ADDR:PORT with an IP address \
             (0.0.0.0:8080, [::1]:8080), not {s:?}"
        ))
    })
}

/// What every client is sent, serialized once per refresh.
#[derive(Default)]
struct Published {
    version: u64,
    /// `/api/status`: the snapshot as `monitor --json` prints it.
    status: Arc<Vec<u8>>,
    /// `/api/failures`: as `monitor --failures --json` prints it.
    failures: Arc<Vec<u8>>,
    /// One Server-Sent Event with the snapshot, the failures shown and the chart's points.
    event: Arc<Vec<u8>>,
}

struct Hub {
    state: Mutex<Published>,
    changed: Condvar,
    stop: Arc<AtomicBool>,
}

impl Hub {
    fn publish(&self, status: Vec<u8>, failures: Option<Vec<u8>>, event: Vec<u8>) {
        let mut p = self.state.lock().unwrap_or_else(|e| e.into_inner());
        p.version += 1;
        p.status = Arc::new(status);
        if let Some(f) = failures {
            p.failures = Arc::new(f);
        }
        p.event = Arc::new(event);
        drop(p);
        self.changed.notify_all();
    }

    fn current(&self) -> (Arc<Vec<u8>>, Arc<Vec<u8>>) {
        let p = self.state.lock().unwrap_or_else(|e| e.into_inner());
        (p.status.clone(), p.failures.clone())
    }

    /// The next event after version `seen`: `Some((version, event))`, or `None` after
    /// `timeout` without one. Stopping counts as a new version with nothing to send.
    fn wait_newer(&self, seen: u64, timeout: Duration) -> Option<(u64, Arc<Vec<u8>>)> {
        let p = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let (p, _) = self
            .changed
            .wait_timeout_while(p, timeout, |p| {
                p.version == seen && !self.stop.load(Ordering::SeqCst)
            })
            .unwrap_or_else(|e| e.into_inner());
        (p.version != seen).then(|| (p.version, p.event.clone()))
    }
}

/// Reads the run and keeps what the page shows between refreshes.
struct Feeder {
    monitor: Monitor,
    paths: RunPaths,
    started: Instant,
    interval_s: f64,
    /// Each shard's failed items, and the (state, failed count) they were read at: a shard's
    /// manifest is read again only when that changes.
    failed: Vec<Option<Vec<FailedItem>>>,
    read_at: Vec<Option<(State, u64)>>,
    errors: Vec<Option<String>>,
    history: Vec<(f64, u64, Option<f64>)>,
    stride: u64,
    ticks: u64,
}

#[derive(Serialize)]
struct Event<'a> {
    status: &'a Snapshot,
    failures: FailuresView<'a>,
    /// (seconds since the server started, items done, items/s).
    history: &'a [(f64, u64, Option<f64>)],
    interval_s: f64,
    updated: String,
}

#[derive(Serialize)]
struct FailuresView<'a> {
    failed_items: u64,
    shards_with_failures: u32,
    shards_without_manifest: u32,
    /// The first failed items in shard order (`/api/failures` has them all).
    items: Vec<&'a FailedItem>,
    /// Manifests or logs that could not be read.
    errors: Vec<&'a str>,
}

impl Feeder {
    fn new(monitor: Monitor, paths: RunPaths, interval: Duration) -> Feeder {
        let n = monitor.num_shards() as usize;
        Feeder {
            monitor,
            paths,
            started: Instant::now(),
            interval_s: interval.as_secs_f64(),
            failed: vec![None; n],
            read_at: vec![None; n],
            errors: vec![None; n],
            history: Vec::new(),
            stride: 1,
            ticks: 0,
        }
    }

    fn tick(&mut self, hub: &Hub) {
        let snap = self.monitor.snapshot();
        let num_shards = snap.num_shards;
        let mut failures_changed = self.ticks == 0;
        for view in &snap.shards {
            let i = view.shard as usize;
            let key = (view.state, view.items_failed);
            if self.read_at[i] == Some(key) {
                continue;
            }
            self.read_at[i] = Some(key);
            failures_changed = true;
            match shard_failures(&self.paths, view.shard, num_shards) {
                Ok(items) => {
                    // The log tells of a failed item before its record reaches the manifest
                    // (records are committed in batches): read it again next time until it does.
                    let found = items.as_ref().map_or(0, |v| v.len() as u64);
                    if found < view.items_failed {
                        self.read_at[i] = None;
                    }
                    self.failed[i] = items;
                    self.errors[i] = None;
                }
                Err(e) => self.errors[i] = Some(format!("shard {}: {e}", view.shard)),
            }
        }
        if self.ticks.is_multiple_of(self.stride) {
            self.history.push((
                self.started.elapsed().as_secs_f64(),
                snap.summary.items_done,
                snap.summary.rate,
            ));
            if self.history.len() > HISTORY_POINTS {
                let mut k = 0;
                self.history.retain(|_| {
                    k += 1;
                    k % 2 == 1
                });
                self.stride *= 2;
            }
        }
        self.ticks += 1;
        let report = failures_changed.then(|| self.report(&snap));
        let items: Vec<&FailedItem> = self
            .failed
            .iter()
            .flatten()
            .flatten()
            .take(FAILURES_SHOWN)
            .collect();
        let event = Event {
            status: &snap,
            failures: FailuresView {
                failed_items: self.failed.iter().flatten().map(|v| v.len() as u64).sum(),
                shards_with_failures: self.shards_with_failures(),
                shards_without_manifest: self.shards_without_manifest(),
                items,
                errors: self
                    .errors
                    .iter()
                    .flatten()
                    .take(20)
                    .map(String::as_str)
                    .collect(),
            },
            history: &self.history,
            interval_s: self.interval_s,
            updated: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        };
        let mut sse = b"event: status\ndata: ".to_vec();
        // Compact JSON is one line (newlines in strings are escaped), as one `data:` field needs.
        let _ = serde_json::to_writer(&mut sse, &event);
        sse.extend_from_slice(b"\n\n");
        let mut status = serde_json::to_vec_pretty(&snap).unwrap_or_default();
        status.push(b'\n');
        let failures = report.map(|r| {
            let mut v = serde_json::to_vec_pretty(&r).unwrap_or_default();
            v.push(b'\n');
            v
        });
        hub.publish(status, failures, sse);
    }

    /// The failures as `monitor --failures --json` reports them.
    fn report(&self, snap: &Snapshot) -> Failures {
        let items: Vec<FailedItem> = self.failed.iter().flatten().flatten().cloned().collect();
        Failures {
            run: snap.run.clone(),
            num_shards: snap.num_shards,
            failed_items: items.len() as u64,
            shards_with_failures: self.shards_with_failures(),
            shards_without_manifest: self.shards_without_manifest(),
            items,
        }
    }

    /// Shards with at least one failed item (the event and the failures report both say it).
    fn shards_with_failures(&self) -> u32 {
        self.failed
            .iter()
            .flatten()
            .filter(|v| !v.is_empty())
            .count() as u32
    }

    /// Shards whose manifest could not be read yet.
    fn shards_without_manifest(&self) -> u32 {
        self.failed.iter().filter(|v| v.is_none()).count() as u32
    }
}

/// Serves the run until `stop` is set (SIGINT, SIGTERM); returns the exit code (0).
pub fn serve(
    monitor: Monitor,
    paths: RunPaths,
    addr: SocketAddr,
    interval: Duration,
    stop: Arc<AtomicBool>,
) -> Result<i32> {
    let listener = TcpListener::bind(addr).map_err(|e| {
        Error::usage(format!(
            "--serve: cannot listen on {addr}: {e}{}",
            if e.kind() == ErrorKind::AddrInUse {
                " (another program uses this port: pick another, e.g. --serve 8081)"
            } else {
                ""
            }
        ))
    })?;
    let local = listener.local_addr().unwrap_or(addr);
    if !addr.ip().is_loopback() {
        eprintln!(
            "monitor: warning: serving on {local}, not only on this machine: anyone who can reach \
             this address can read the run's progress, item keys and failure reasons (there is \
             no authentication)"
        );
    }
    let name = monitor_run_name(&monitor);
    let hub = Arc::new(Hub {
        state: Mutex::new(Published::default()),
        changed: Condvar::new(),
        stop: stop.clone(),
    });
    let mut feeder = Feeder::new(monitor, paths, interval);
    // The first snapshot before the first client: the page never starts empty.
    feeder.tick(&hub);
    let host = match local.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            format!("{}:{}", Ipv4Addr::LOCALHOST, local.port())
        }
        _ => local.to_string(),
    };
    eprintln!("monitor: serving run {name:?} at http://{host}/ (Ctrl-C to stop)");
    let reader = {
        let hub = hub.clone();
        std::thread::Builder::new()
            .name("monitor-reader".into())
            .spawn(move || loop {
                let until = Instant::now() + interval;
                while Instant::now() < until {
                    if hub.stop.load(Ordering::SeqCst) {
                        return;
                    }
                    std::thread::sleep(
                        Duration::from_millis(50)
                            .min(until.saturating_duration_since(Instant::now())),
                    );
                }
                feeder.tick(&hub);
            })
            .map_err(|e| Error::usage(format!("--serve: cannot start a thread: {e}")))?
    };
    listener
        .set_nonblocking(true)
        .map_err(|e| Error::usage(format!("--serve: cannot set up {local}: {e}")))?;
    let active = Arc::new(AtomicUsize::new(0));
    while !stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((stream, _)) => accept(stream, &hub, &active),
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(20))
            }
            // Out of file descriptors, a connection reset before it was accepted: wait a little.
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
    hub.changed.notify_all();
    let _ = reader.join();
    // Open event streams see the stop at their next wake-up; give them a moment to close.
    let until = Instant::now() + Duration::from_secs(1);
    while active.load(Ordering::SeqCst) > 0 && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(0)
}

fn monitor_run_name(monitor: &Monitor) -> String {
    monitor.run.clone()
}

/// Hands a new connection to a thread of its own, or answers 503 when too many are open.
fn accept(stream: TcpStream, hub: &Arc<Hub>, active: &Arc<AtomicUsize>) {
    if active.load(Ordering::SeqCst) >= MAX_CONNECTIONS {
        // One non-blocking write: a small answer fits the socket's buffer, and the accepting
        // thread never waits on a client.
        let _ = stream.set_nonblocking(true);
        let _ = (&stream).write_all(&head(503, "text/plain; charset=utf-8", 21, &[]));
        let _ = (&stream).write_all(b"too many connections\n");
        return;
    }
    let _ = stream.set_nonblocking(false);
    active.fetch_add(1, Ordering::SeqCst);
    let (hub, count) = (hub.clone(), active.clone());
    let spawned = std::thread::Builder::new()
        .name("monitor-http".into())
        .stack_size(CONNECTION_STACK)
        .spawn(move || {
            handle(stream, &hub);
            count.fetch_sub(1, Ordering::SeqCst);
        });
    if spawned.is_err() {
        active.fetch_sub(1, Ordering::SeqCst);
    }
}

fn reason(code: u16) -> &'static str {
    match code {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Error",
    }
}

/// A response head. Every response closes its connection and may not be framed, sniffed or
/// cached; the page may load only its own files and open only its own event stream.
fn head(code: u16, content_type: &str, len: usize, extra: &[(&str, &str)]) -> Vec<u8> {
    let mut h = format!(
        "HTTP/1.1 {code} {}\r\nContent-Type: {content_type}\r\nContent-Length: {len}\r\n\
         Cache-Control: no-store\r\nX-Content-Type-Options: nosniff\r\n\
         Content-Security-Policy: default-src 'none'; script-src 'self'; style-src 'self'; \
         connect-src 'self'; img-src 'self' data:; frame-ancestors 'none'\r\n\
         Referrer-Policy: no-referrer\r\nConnection: close\r\n",
        reason(code)
    );
    for (k, v) in extra {
        h.push_str(&format!("{k}: {v}\r\n"));
    }
    h.push_str("\r\n");
    h.into_bytes()
}

fn respond(
    stream: &mut TcpStream,
    code: u16,
    ctype: &str,
    body: &[u8],
    head_only: bool,
    extra: &[(&str, &str)],
) {
    let mut out = head(code, ctype, body.len(), extra);
    if !head_only {
        out.extend_from_slice(body);
    }
    let _ = stream.write_all(&out);
    let _ = stream.flush();
}

fn error(stream: &mut TcpStream, code: u16, msg: &str) {
    let body = format!("{code} {}: {msg}\n", reason(code));
    respond(
        stream,
        code,
        "text/plain; charset=utf-8",
        body.as_bytes(),
        false,
        &[],
    );
}

/// Reads one request head, within [`REQUEST_DEADLINE`] and [`MAX_HEAD`], and answers it.
fn handle(mut stream: TcpStream, hub: &Hub) {
    let _ = stream.set_write_timeout(Some(WRITE_TIMEOUT));
    let deadline = Instant::now() + REQUEST_DEADLINE;
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 2048];
    let (method, target) = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return error(&mut stream, 408, "the request took too long to arrive");
        }
        let _ = stream.set_read_timeout(Some(left));
        let room = (MAX_HEAD + 1 - buf.len()).min(chunk.len());
        match stream.read(&mut chunk[..room]) {
            Ok(0) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return error(&mut stream, 408, "the request took too long to arrive");
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) => return,
        }
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&buf) {
            Ok(httparse::Status::Complete(_)) => {
                break (
                    req.method.unwrap_or_default().to_string(),
                    req.path.unwrap_or_default().to_string(),
                )
            }
            Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD => {
                return error(&mut stream, 431, "the request head is over 8 KiB");
            }
            Ok(httparse::Status::Partial) => {}
            Err(httparse::Error::TooManyHeaders) => {
                return error(&mut stream, 431, "the request has over 32 headers");
            }
            Err(_) => return error(&mut stream, 400, "malformed request"),
        }
    };
    let head_only = match method.as_str() {
        "GET" => false,
        "HEAD" => true,
        _ => {
            let body = b"405 Method Not Allowed: this server is read-only (GET and HEAD only)\n";
            return respond(
                &mut stream,
                405,
                "text/plain; charset=utf-8",
                body,
                false,
                &[("Allow", "GET, HEAD")],
            );
        }
    };
    // The path is compared with a fixed list, never used as a file name.
    let path = target.split(['?', '#']).next().unwrap_or_default();
    let json = "application/json";
    match path {
        "/" | "/index.html" => respond(
            &mut stream,
            200,
            "text/html; charset=utf-8",
            INDEX_HTML.as_bytes(),
            head_only,
            &[],
        ),
        "/app.js" => respond(
            &mut stream,
            200,
            "text/javascript; charset=utf-8",
            APP_JS.as_bytes(),
            head_only,
            &[],
        ),
        "/app.css" => respond(
            &mut stream,
            200,
            "text/css; charset=utf-8",
            APP_CSS.as_bytes(),
            head_only,
            &[],
        ),
        "/api/status" => respond(&mut stream, 200, json, &hub.current().0, head_only, &[]),
        "/api/failures" => respond(&mut stream, 200, json, &hub.current().1, head_only, &[]),
        "/events" => events(&mut stream, hub, head_only),
        _ => error(&mut stream, 404, "no such page (the dashboard is at /)"),
    }
}

/// `/events`: the latest snapshot at once, then each new one, as Server-Sent Events, until the
/// client goes away, stops reading for [`WRITE_TIMEOUT`], or the server stops.
fn events(stream: &mut TcpStream, hub: &Hub, head_only: bool) {
    let h = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-store\r\n\
             X-Content-Type-Options: nosniff\r\nConnection: close\r\n\r\n";
    if stream.write_all(h.as_bytes()).is_err() || head_only {
        return;
    }
    // The browser reconnects this long after a lost connection.
    if stream.write_all(b"retry: 2000\n\n").is_err() {
        return;
    }
    let mut seen = 0;
    loop {
        if hub.stop.load(Ordering::SeqCst) {
            return;
        }
        let sent = match hub.wait_newer(seen, KEEPALIVE) {
            Some((version, event)) => {
                seen = version;
                stream.write_all(&event)
            }
            None => stream.write_all(b": keepalive\n\n"),
        };
        if sent.and_then(|_| stream.flush()).is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serve_addresses() {
        assert_eq!(parse_addr("8080").unwrap().to_string(), "127.0.0.1:8080");
        assert_eq!(parse_addr("0.0.0.0:80").unwrap().to_string(), "0.0.0.0:80");
        assert_eq!(parse_addr("[::1]:8080").unwrap().to_string(), "[::1]:8080");
        assert!(parse_addr("localhost:8080").is_err());
        assert!(parse_addr("70000").is_err());
        assert!(parse_addr("").is_err());
    }
}
