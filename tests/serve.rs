//! monitor --serve: the dashboard's HTTP server against the real binary (fixed paths, 404s,
//! traversal, malformed and slow requests, many event streams, a connection cap, nothing
//! written), and the page in a real browser (tests/dashboard_browser.py).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;

const MONITOR: &str = env!("CARGO_BIN_EXE_monitor");

/// A `monitor --serve` on a free port, killed when dropped.
struct Server {
    child: Child,
    port: u16,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    fn start(p: &Project, run: &str) -> Server {
        Server::start_with(p, &["--run", run])
    }

    fn start_with(p: &Project, args: &[&str]) -> Server {
        let mut child = Command::new(MONITOR)
            .arg("--root")
            .arg(p.root())
            .args(["--serve", "0", "--interval", "0.2"])
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start monitor --serve");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        let port = loop {
            let line = rx
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .expect("monitor --serve says where it serves");
            if let Some(rest) = line.split("http://127.0.0.1:").nth(1) {
                break rest.split('/').next().unwrap().parse().expect("port");
            }
        };
        Server { child, port }
    }

    fn connect(&self) -> TcpStream {
        let s = TcpStream::connect(("127.0.0.1", self.port)).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        s
    }

    /// Sends `raw` and returns (status code, the whole response as text).
    fn raw(&self, raw: &[u8]) -> (u16, String) {
        let mut s = self.connect();
        s.write_all(raw).expect("send");
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        let text = String::from_utf8_lossy(&out).into_owned();
        let code = text
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        (code, text)
    }

    fn get(&self, path: &str) -> (u16, String) {
        self.raw(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
    }

    /// The body of a 200 answer to GET `path`, as JSON.
    fn json(&self, path: &str) -> serde_json::Value {
        let (code, text) = self.get(path);
        assert_eq!(code, 200, "{path}: {text}");
        let body = text.split_once("\r\n\r\n").expect("head and body").1;
        serde_json::from_str(body).expect("JSON body")
    }

    fn rss_kib(&self) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
            .unwrap_or(0)
    }
}

/// A run that has ended: 2 shards of 8 items, item 5 failed with a reason and stderr.
fn ended_run(p: &Project) {
    p.script(
        "g.sh",
        "#!/bin/sh\n[ \"$1\" = 5 ] && { echo \"bad item $1\" >&2; exit 4; }\necho \"$1\"\n",
    );
    p.write(
        "s.yaml",
        "run: s\nitems: {range: {start: 0, end: 8}}\ngenerator: {command: [./g.sh, \"{key}\"], retries: 0}\noutput: {columns: [k]}\n",
    );
    let codes: Vec<i32> = (0..2)
        .map(|i| {
            p.worker(
                "s.yaml",
                &["--shard-index", &i.to_string(), "--num-shards", "2"],
            )
            .output()
            .expect("worker")
            .status
            .code()
            .unwrap_or(-1)
        })
        .collect();
    assert!(codes.contains(&1), "one shard fails: {codes:?}");
}

fn monitor_json(p: &Project, args: &[&str]) -> serde_json::Value {
    let out = Command::new(MONITOR)
        .arg("--root")
        .arg(p.root())
        .args(args)
        .output()
        .expect("monitor");
    assert_exit(&out, 0, "monitor", p.root());
    serde_json::from_slice(&out.stdout).expect("JSON")
}

/// The seconds since a shard's last log line change between two looks.
fn without_silence(mut v: serde_json::Value) -> serde_json::Value {
    for s in v["shards"].as_array_mut().expect("shards") {
        s.as_object_mut().unwrap().remove("silent_s");
    }
    v
}

#[test]
fn serve_answers_its_fixed_paths_only_read_only_and_writes_nothing() {
    let p = Project::new();
    ended_run(&p);
    let before = p.listing();
    let srv = Server::start(&p, "s");

    let (code, page) = srv.get("/");
    assert_eq!(code, 200, "{page}");
    assert!(
        page.contains("text/html") && page.contains("/app.js"),
        "{page}"
    );
    for path in ["/app.js", "/app.css", "/index.html?x=1"] {
        assert_eq!(srv.get(path).0, 200, "{path}");
    }
    let (code, head) = srv.raw(b"HEAD /api/status HTTP/1.1\r\n\r\n");
    assert_eq!(code, 200);
    assert!(head.ends_with("\r\n\r\n"), "HEAD has no body: {head}");

    // /api/status is `monitor --json`, /api/failures is `monitor --failures --json`.
    assert_eq!(
        without_silence(srv.json("/api/status")),
        without_silence(monitor_json(&p, &["--run", "s", "--json"]))
    );
    let failures = srv.json("/api/failures");
    assert_eq!(
        failures,
        monitor_json(&p, &["--run", "s", "--failures", "--json"])
    );
    assert_eq!(failures["failed_items"], 1);
    assert_eq!(failures["items"][0]["stderr_tail"][0], "bad item 5");

    // Any other path is 404, and no request path reaches the file system.
    for path in [
        "/nope",
        "/favicon.ico",
        "/../../etc/passwd",
        "/%2e%2e/%2e%2e/etc/passwd",
        "/..%2f..%2f..%2fetc%2fpasswd",
        "//etc/passwd",
        "/app.js/../../../../etc/passwd",
        "/api/status/../../../../etc/passwd",
        "/logs/s/shard_0_of_2.log",
        "/s.yaml",
        "http://x/etc/passwd",
    ] {
        let (code, text) = srv.get(path);
        assert!(code == 404 || code == 400, "{path}: {text}");
        assert!(
            !text.contains("root:") && !text.contains("run: s"),
            "{path}: {text}"
        );
    }
    // Read-only: other methods are refused.
    for method in ["POST", "PUT", "DELETE", "PATCH", "OPTIONS"] {
        let (code, text) = srv.raw(
            format!("{method} /api/status HTTP/1.1\r\nContent-Length: 2\r\n\r\n{{}}").as_bytes(),
        );
        assert_eq!(code, 405, "{method}: {text}");
        assert!(text.contains("Allow: GET, HEAD"), "{text}");
    }
    // Malformed requests and oversized heads.
    for raw in [
        &b"GARBAGE\r\n\r\n"[..],
        b"GET\r\n\r\n",
        b"\x00\x01\x02\x03\r\n\r\n",
        b"GET / HTTP/9\r\n\r\n",
    ] {
        let (code, text) = srv.raw(raw);
        assert_eq!(code, 400, "{raw:?}: {text}");
    }
    let big = format!("GET / HTTP/1.1\r\nX-Big: {}\r\n\r\n", "a".repeat(20_000));
    assert_eq!(srv.raw(big.as_bytes()).0, 431);
    let many: String = (0..40).map(|i| format!("X-{i}: 1\r\n")).collect();
    assert_eq!(
        srv.raw(format!("GET / HTTP/1.1\r\n{many}\r\n").as_bytes())
            .0,
        431
    );
    // A client that connects and leaves at once changes nothing.
    drop(srv.connect());
    assert_eq!(srv.get("/api/status").0, 200);
    assert_eq!(p.listing(), before, "monitor --serve wrote in the project");
}

#[test]
fn a_slow_client_is_cut_off_and_connections_are_capped_while_the_server_answers() {
    let p = Project::new();
    ended_run(&p);
    let srv = Server::start(&p, "s");
    // Slowloris: a header byte every 300 ms never completes the head; the server ends it at
    // its deadline (10 s) whatever the pace.
    let mut slow = srv.connect();
    let started = Instant::now();
    let trickle = std::thread::spawn(move || {
        let _ = slow.write_all(b"GET / HTTP/1.1\r\n");
        let mut answer = Vec::new();
        for _ in 0..100 {
            if slow.write_all(b"X").is_err() {
                break;
            }
            std::thread::sleep(Duration::from_millis(300));
            let mut buf = [0u8; 512];
            slow.set_nonblocking(true).unwrap();
            match slow.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
                Err(_) => {}
            }
            slow.set_nonblocking(false).unwrap();
        }
        (
            started.elapsed(),
            String::from_utf8_lossy(&answer).into_owned(),
        )
    });
    // Meanwhile the server answers at once.
    let t = Instant::now();
    assert_eq!(srv.get("/api/status").0, 200);
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());

    // Connections that send nothing hold a slot each until the deadline; past the cap (64, the
    // slow one included) a new one is answered 503 at once, and the server recovers as soon as
    // they go.
    let idle: Vec<TcpStream> = (0..63).map(|_| srv.connect()).collect();
    std::thread::sleep(Duration::from_millis(500));
    let t = Instant::now();
    let (code, text) = srv.get("/api/status");
    assert_eq!(code, 503, "{text}");
    assert!(t.elapsed() < Duration::from_secs(2));
    drop(idle);
    wait_for("the server to serve again", Duration::from_secs(5), || {
        srv.get("/api/status").0 == 200
    });

    let (took, answer) = trickle.join().unwrap();
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer:?}");
    assert!(
        took >= Duration::from_secs(9) && took < Duration::from_secs(15),
        "the slow client was cut off after {took:?}"
    );
}

#[test]
fn fifty_event_streams_get_every_snapshot_while_the_server_stays_responsive_and_small() {
    let p = Project::new();
    ended_run(&p);
    let before = p.listing();
    let srv = Server::start(&p, "s");
    let rss_idle = srv.rss_kib();
    let mut streams: Vec<BufReader<TcpStream>> = (0..50)
        .map(|_| {
            let mut s = srv.connect();
            s.write_all(b"GET /events HTTP/1.1\r\nAccept: text/event-stream\r\n\r\n")
                .unwrap();
            BufReader::new(s)
        })
        .collect();
    // Every stream gets the head and then three snapshots (one per --interval, 0.2 s).
    for (i, r) in streams.iter_mut().enumerate() {
        let mut events = 0;
        let mut line = String::new();
        let mut first = true;
        while events < 3 {
            line.clear();
            assert!(r.read_line(&mut line).unwrap() > 0, "stream {i} ended");
            if first {
                assert!(line.starts_with("HTTP/1.1 200"), "{line}");
                first = false;
            }
            if let Some(data) = line.strip_prefix("data: ") {
                let ev: serde_json::Value = serde_json::from_str(data).expect("event JSON");
                assert_eq!(ev["status"]["run"], "s");
                assert_eq!(ev["failures"]["failed_items"], 1);
                events += 1;
            }
        }
    }
    // With the 50 streams open, other requests are answered at once.
    for _ in 0..5 {
        let t = Instant::now();
        assert_eq!(srv.get("/api/status").0, 200);
        assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
    }
    let rss = srv.rss_kib();
    eprintln!("monitor --serve RSS: {rss_idle} KiB idle, {rss} KiB with 50 event streams");
    assert!(rss < 64 * 1024, "RSS {rss} KiB with 50 event streams");
    drop(streams);
    wait_for("the server to serve again", Duration::from_secs(5), || {
        srv.get("/").0 == 200
    });
    assert_eq!(p.listing(), before, "monitor --serve wrote in the project");
}

#[test]
fn serve_started_before_any_run_waits_for_one() {
    let p = Project::new();
    let srv = std::thread::scope(|s| {
        s.spawn(|| {
            std::thread::sleep(Duration::from_millis(800));
            ended_run(&p);
        });
        // No run named and none yet: it says so, waits, then serves the run that appears.
        Server::start_with(&p, &[])
    });
    let status = srv.json("/api/status");
    assert_eq!(status["run"], "s");
    assert_eq!(status["num_shards"], 2);
}

#[test]
fn serve_refuses_a_bad_address_and_a_busy_port_clearly() {
    let p = Project::new();
    ended_run(&p);
    for (arg, want) in [
        ("localhost:80", "ADDR:PORT"),
        ("99999", "ADDR:PORT"),
        ("abc", "ADDR:PORT"),
    ] {
        let out = Command::new(MONITOR)
            .arg("--root")
            .arg(p.root())
            .args(["--run", "s", "--serve", arg])
            .output()
            .unwrap();
        assert_exit(&out, 2, "bad --serve", p.root());
        assert!(stderr(&out).contains(want), "{}", stderr(&out));
    }
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = busy.local_addr().unwrap().port().to_string();
    let out = Command::new(MONITOR)
        .arg("--root")
        .arg(p.root())
        .args(["--run", "s", "--serve", &port])
        .output()
        .unwrap();
    assert_exit(&out, 2, "busy port", p.root());
    assert!(stderr(&out).contains("pick another"), "{}", stderr(&out));
    // Another address than this machine's own is served only when named, with a warning.
    let mut child = Command::new(MONITOR)
        .arg("--root")
        .arg(p.root())
        .args(["--run", "s", "--serve", "0.0.0.0:0"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        first.contains("warning") && first.contains("no authentication"),
        "{first}"
    );
}

/// The page in headless Chromium, driven by Selenium: a run whose shards wait for a file, the
/// table, counts and failed items against `monitor --json`, and the page following the run to
/// its end without a reload. The screenshot goes to target/test-artifacts/.
#[test]
fn a_real_browser_shows_the_run_live() {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let python = manifest.join("target/py-venv/bin/python");
    let has = |cmd: &str| {
        Command::new("sh")
            .args(["-c", &format!("command -v {cmd}")])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    let selenium = python.is_file()
        && Command::new(&python)
            .args(["-c", "import selenium"])
            .output()
            .is_ok_and(|o| o.status.success());
    if !(selenium && has("chromium") && has("chromedriver")) {
        let why = "needs chromium, chromedriver and selenium in target/py-venv \
                   (./scripts/test.sh installs them)";
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("dashboard browser test: {why}, and CI=true does not skip it");
        }
        // Straight to the file descriptor: the test harness captures eprintln!.
        let _ = writeln!(
            std::io::stderr(),
            "\n*** SKIPPED: dashboard browser test: {why} ***\n"
        );
        return;
    }
    let p = Project::new();
    // Every item waits for the file `go`; item 13 then fails. Items are slow enough that the
    // page sees the shards end one by one.
    p.script(
        "g.sh",
        "#!/bin/sh\nwhile [ ! -f go ]; do sleep 0.05; done\n[ \"$1\" = 13 ] && { echo \"item $1 is bad\" >&2; exit 4; }\nsleep 0.1\necho \"$1\"\n",
    );
    p.write(
        "b.yaml",
        "run: b\nitems: {range: {start: 0, end: 24}}\ngenerator: {command: [./g.sh, \"{key}\"], retries: 0}\noutput: {columns: [k]}\n",
    );
    let mut workers: Vec<Child> = (0..3)
        .map(|i| {
            let mut c = p.worker(
                "b.yaml",
                &["--shard-index", &i.to_string(), "--num-shards", "3"],
            );
            c.current_dir(p.root());
            spawn(c)
        })
        .collect();
    wait_for("the shards to start", Duration::from_secs(30), || {
        (0..3).all(|i| p.path(&format!("logs/b/shard_{i}_of_3.log")).is_file())
    });
    let srv = Server::start(&p, "b");
    let artifacts = manifest.join("target/test-artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    let out = Command::new(&python)
        .arg(manifest.join("tests/dashboard_browser.py"))
        .args(["--url", &format!("http://127.0.0.1:{}/", srv.port)])
        .args(["--monitor", MONITOR])
        .arg("--root")
        .arg(p.root())
        .args(["--run", "b"])
        .arg("--go")
        .arg(p.path("go"))
        .arg("--screenshot")
        .arg(artifacts.join("dashboard.png"))
        .output()
        .expect("run the browser test");
    for w in &mut workers {
        let _ = w.kill();
        let _ = w.wait();
    }
    assert!(
        out.status.success(),
        "browser test failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{}", String::from_utf8_lossy(&out.stdout));
}
