//! Allocations per proxied request: the gateway's own code allocates nothing on the plain proxy
//! path (issue 25). This binary has its own global allocator, which counts every allocation
//! (and reallocation) made while a window is open and captures a backtrace of each. The gateway
//! runs in-process in front of an upstream and behind a client that both allocate nothing per
//! request (raw sockets, fixed buffers, prebuilt bytes, threads of their own), so what the
//! window sees is the gateway's.
//!
//! Each allocation is attributed by walking its backtrace from the allocation outwards to the
//! first frame of kairos_rs, actix, hyper, h2 or tokio: it is the gateway's own when that frame
//! is kairos_rs (calls into http, bytes, alloc and std made by our code count as ours; calls
//! into actix, hyper or tokio count as theirs). The test asserts none of ours (bar the
//! allow-list below), and a bound on the total as measured, so a regression in either shows.

mod support;

use std::alloc::{GlobalAlloc, Layout, System};
use std::backtrace::Backtrace;
use std::cell::Cell;
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use support::Gateway;

/// Requests before the window (pools, caches and thread-locals filled) and in it.
const WARMUP: usize = 300;
const MEASURED: usize = 400;

/// All allocations made during the window, per request, as measured (actix's: see the report
/// this test prints; hyper made 6 more before the upstream HTTP/1.1 client became the
/// gateway's own). Raise it only with a reason.
const MAX_TOTAL_PER_REQUEST: f64 = 5.5;

/// Allocations of ours that are allowed, by a function (path) or source file on their stack,
/// with why. Nothing on the request path belongs here.
const ALLOWED: &[(&str, &str, &str)] = &[(
    "kairos_rs::observability::stats::",
    "src/observability/stats.rs",
    "the live stats sampler: once a second on the background thread, not per request",
)];

/// One allocation seen in the window: the thread it was made on, and where.
struct Seen {
    thread: [u8; 32],
    trace: Backtrace,
}

struct Counting;

static RECORDING: AtomicBool = AtomicBool::new(false);
static COUNT: AtomicU64 = AtomicU64::new(0);
static SEEN: Mutex<Vec<Seen>> = Mutex::new(Vec::new());

thread_local! {
    /// Set while this thread records an allocation: the recording allocates itself.
    static IN_HOOK: Cell<bool> = const { Cell::new(false) };
}

#[global_allocator]
static ALLOC: Counting = Counting;

fn note() {
    if !RECORDING.load(Relaxed) {
        return;
    }
    // The recording's own allocations are not counted. A thread-local being torn down cannot
    // be used: such an allocation is counted, not recorded.
    match IN_HOOK.try_with(|f| f.replace(true)) {
        Ok(true) => return,
        Ok(false) => {}
        Err(_) => {
            COUNT.fetch_add(1, Relaxed);
            return;
        }
    }
    COUNT.fetch_add(1, Relaxed);
    let mut thread = [0u8; 32];
    if let Some(name) = std::thread::current().name() {
        let n = name.len().min(32);
        thread[..n].copy_from_slice(&name.as_bytes()[..n]);
    }
    let trace = Backtrace::force_capture();
    if let Ok(mut seen) = SEEN.lock() {
        seen.push(Seen { thread, trace });
    }
    let _ = IN_HOOK.try_with(|f| f.set(false));
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note();
        System.alloc(layout)
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note();
        System.alloc_zeroed(layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note();
        System.realloc(ptr, layout, new_size)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
}

/// The client's request: what curl sends, and one header of the client's own.
const REQUEST: &[u8] = b"GET /api/items/42?expand=1 HTTP/1.1\r\nHost: gateway.test\r\n\
User-Agent: alloc-test/1.0\r\nAccept: */*\r\nX-Client-Tag: c-1\r\n\r\n";

/// The upstream's answer: an NGINX-like head, one header of its own, a two-byte body.
const RESPONSE: &[u8] =
    b"HTTP/1.1 200 OK\r\nServer: raw\r\nDate: Mon, 07 Dec 2026 20:00:00 GMT\r\n\
Content-Type: text/plain\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\
X-Upstream-Tag: u-1\r\n\r\nok";

/// An upstream on a thread of its own that answers every request head it reads with
/// [`RESPONSE`], on keep-alive connections, from a fixed buffer: it allocates nothing per
/// request. Requests carry no body (the client sends none, so the gateway sends none).
fn raw_upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind upstream");
    let addr = listener.local_addr().expect("upstream addr");
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            std::thread::spawn(move || serve_heads(conn));
        }
    });
    addr
}

fn serve_heads(mut conn: TcpStream) {
    let mut buf = [0u8; 16384];
    let mut filled = 0;
    loop {
        let n = match conn.read(&mut buf[filled..]) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        filled += n;
        // Every complete head in the buffer gets its answer; a partial one waits for more.
        let mut start = 0;
        while let Some(end) = find(&buf[start..filled], b"\r\n\r\n") {
            if conn.write_all(RESPONSE).is_err() {
                return;
            }
            start += end + 4;
        }
        buf.copy_within(start..filled, 0);
        filled -= start;
        if filled == buf.len() {
            return;
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// A keep-alive client with a fixed buffer: sends [`REQUEST`] and reads one response (head and
/// Content-Length body), returning its length in the buffer.
struct Client {
    conn: TcpStream,
    buf: [u8; 16384],
}

impl Client {
    fn connect(addr: SocketAddr) -> Client {
        let conn = TcpStream::connect(addr).expect("connect to the gateway");
        conn.set_nodelay(true).expect("nodelay");
        conn.set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .expect("timeout");
        Client {
            conn,
            buf: [0; 16384],
        }
    }

    /// One exchange; panics on anything but a 200 with the upstream's body.
    fn exchange(&mut self) -> usize {
        self.conn.write_all(REQUEST).expect("send the request");
        let mut filled = 0;
        loop {
            let n = self
                .conn
                .read(&mut self.buf[filled..])
                .expect("read the response");
            assert!(n > 0, "the gateway closed the connection");
            filled += n;
            let Some(end) = find(&self.buf[..filled], b"\r\n\r\n") else {
                continue;
            };
            let head = &self.buf[..end];
            assert!(head.starts_with(b"HTTP/1.1 200 "), "not a 200");
            let len = content_length(head).expect("a Content-Length");
            if filled >= end + 4 + len {
                assert_eq!(filled, end + 4 + len, "one response at a time");
                assert_eq!(&self.buf[end + 4..filled], b"ok");
                return filled;
            }
        }
    }
}

fn content_length(head: &[u8]) -> Option<usize> {
    head.split(|&b| b == b'\n').find_map(|line| {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let colon = line.iter().position(|&b| b == b':')?;
        if !line[..colon].eq_ignore_ascii_case(b"content-length") {
            return None;
        }
        std::str::from_utf8(&line[colon + 1..])
            .ok()?
            .trim()
            .parse()
            .ok()
    })
}

/// Whose an allocation is: the first frame, from the allocation outwards, of one of the
/// crates that count.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Owner {
    Ours,
    Actix,
    Hyper,
    H2,
    Tokio,
    /// None of them on the stack (the test's own threads, std).
    Other,
}

/// The crate a demangled symbol belongs to: its first path segment, for a trait method the
/// type's (or, for a bare type parameter, the trait's).
fn crate_of(symbol: &str) -> &str {
    let s = symbol.trim_start_matches(['<', '&']);
    let s = s.strip_prefix("mut ").unwrap_or(s);
    let s = s.strip_prefix("dyn ").unwrap_or(s);
    let first = s.split("::").next().unwrap_or(s);
    if !first.contains(' ') {
        return first;
    }
    // `<T as some_crate::Trait>::method`: the trait's crate.
    match s.split_once(" as ") {
        Some((_, t)) => t.split("::").next().unwrap_or(t),
        None => first,
    }
}

fn owner_of(krate: &str) -> Option<Owner> {
    Some(match krate {
        "kairos_rs" => Owner::Ours,
        k if k.starts_with("actix") => Owner::Actix,
        k if k.starts_with("hyper") => Owner::Hyper,
        "h2" => Owner::H2,
        k if k.starts_with("tokio") => Owner::Tokio,
        _ => return None,
    })
}

/// A symbol without its generic arguments (`a::B<C, D>::f` -> `a::B::f`); `<T as Trait>`
/// is kept.
fn strip_generics(name: &str) -> String {
    let mut out = String::new();
    let mut depth = 0;
    let mut prev = ' ';
    for c in name.chars() {
        match c {
            '<' if depth > 0 || prev.is_alphanumeric() || prev == '_' => depth += 1,
            '>' if depth > 0 => depth -= 1,
            _ if depth > 0 => {}
            _ => out.push(c),
        }
        prev = c;
    }
    out
}

/// One frame of a backtrace: its function, and its source file when known (our crate and
/// std have line tables, dependencies none).
struct Frame {
    name: String,
    file: Option<String>,
    line: Option<u32>,
}

impl Frame {
    /// The crate of the frame's function. A function inlined into another is named without
    /// its path (`upstream`, `{async_fn#0}`): its file says whose it is.
    fn krate(&self) -> String {
        if let Some(file) = &self.file {
            let ours = concat!(env!("CARGO_MANIFEST_DIR"), "/src/");
            if file.starts_with("./src/") || file.starts_with("src/") || file.starts_with(ours) {
                return "kairos_rs".into();
            }
            // A dependency's file: `.../<crate>-<version>/src/...` from the registry,
            // `./vendor/<crate>/src/...` vendored.
            if !strip_generics(&self.name).contains("::") {
                if let Some((dir, _)) = file.split_once("/src/") {
                    let dir = dir.rsplit('/').next().unwrap_or(dir);
                    let name = match dir.rsplit_once('-') {
                        Some((name, version))
                            if version.starts_with(|c: char| c.is_ascii_digit()) =>
                        {
                            name
                        }
                        _ => dir,
                    };
                    return name.replace('-', "_");
                }
            }
        }
        crate_of(&self.name).to_string()
    }

    /// The function's name without generic arguments, with its line when it has no path.
    fn short(&self) -> String {
        let mut out = strip_generics(&self.name);
        if !out.contains("::") {
            if let (Some(file), Some(line)) = (&self.file, self.line) {
                out.push_str(&format!(" ({file}:{line})"));
            }
        }
        out
    }
}

/// The frames of a backtrace, innermost first (std prints `{ fn: "name", file: "..", line: n }`
/// per symbol, inlined ones included).
fn frames(trace: &Backtrace) -> Vec<Frame> {
    let text = format!("{trace:?}");
    text.split("{ fn: \"")
        .skip(1)
        .filter_map(|s| {
            let (name, rest) = s.split_once('"')?;
            let entry = rest.split_once('}').map_or(rest, |(e, _)| e);
            let file = entry
                .split_once("file: \"")
                .and_then(|(_, f)| f.split_once('"'))
                .map(|(f, _)| f.to_string());
            let line = entry
                .split_once("line: ")
                .and_then(|(_, l)| l.trim().trim_end_matches(',').parse().ok());
            Some(Frame {
                name: name.to_string(),
                file,
                line,
            })
        })
        .collect()
}

/// One allocation, attributed: its owner, the frame that decided it and the next ones
/// outwards (a call site to read), and the thread.
struct Attributed {
    owner: Owner,
    site: String,
    thread: String,
    /// The whole stack, from the allocation outwards, for a closer look (`ALLOC_STACKS=1`).
    stack: Vec<String>,
}

fn attribute(seen: &Seen) -> Attributed {
    let thread = String::from_utf8_lossy(&seen.thread)
        .trim_end_matches('\0')
        .to_string();
    let frames = frames(&seen.trace);
    // Frames up to the allocator's own are the test's recording.
    let start = frames
        .iter()
        .position(|f| f.name.contains("__rust_alloc") || f.name.contains("__rust_realloc"))
        .map_or(0, |i| i + 1);
    let frames = &frames[start..];
    let stack = frames.iter().map(Frame::short).collect::<Vec<_>>();
    let site_from = |i: usize| stack[i..stack.len().min(i + 3)].join(" <- ");
    for (i, frame) in frames.iter().enumerate() {
        if let Some(owner) = owner_of(&frame.krate()) {
            let mut site = site_from(i);
            // Theirs, but called by our code (a call the gateway could avoid or pool).
            if owner != Owner::Ours && frames[i..].iter().any(|f| f.krate() == "kairos_rs") {
                site.push_str("  (called by kairos_rs)");
            }
            return Attributed {
                owner,
                site,
                thread,
                stack,
            };
        }
    }
    Attributed {
        owner: Owner::Other,
        site: site_from(0),
        thread,
        stack,
    }
}

#[test]
fn the_gateways_own_code_allocates_nothing_per_proxied_request() {
    let upstream = raw_upstream();
    let config = support::config(
        &format!("http://{upstream}"),
        r#"[{"name":"items","path":"/api/{*rest}","upstream":"u"}]"#,
        "",
    );
    let gw = Gateway::start(&config);
    let mut client = Client::connect(gw.addr);
    // The response as the client gets it, checked once (outside the window): the headers
    // both ways were converted, not dropped.
    let n = client.exchange();
    let first = String::from_utf8_lossy(&client.buf[..n]).to_ascii_lowercase();
    for want in [
        "x-upstream-tag: u-1",
        "content-type: text/plain",
        "x-request-id: ",
    ] {
        assert!(first.contains(want), "{want} missing in {first}");
    }
    for _ in 1..WARMUP {
        client.exchange();
    }
    SEEN.lock().expect("lock").reserve(MEASURED * 200);

    COUNT.store(0, Relaxed);
    let started = std::time::Instant::now();
    RECORDING.store(true, Relaxed);
    for _ in 0..MEASURED {
        client.exchange();
    }
    RECORDING.store(false, Relaxed);
    let window = started.elapsed();
    let total = COUNT.load(Relaxed);

    let seen = std::mem::take(&mut *SEEN.lock().expect("lock"));
    let attributed: Vec<Attributed> = seen.iter().map(attribute).collect();
    let unrecorded = total - attributed.len() as u64;
    let allowed = |a: &Attributed| {
        a.owner == Owner::Ours
            && ALLOWED.iter().any(|(path, file, _)| {
                a.stack
                    .iter()
                    .any(|f| f.starts_with(path) || f.contains(file))
            })
    };
    let mut by_owner: BTreeMap<Owner, usize> = BTreeMap::new();
    let mut by_site: BTreeMap<(Owner, &str, &str), usize> = BTreeMap::new();
    for a in attributed.iter().filter(|a| !allowed(a)) {
        *by_owner.entry(a.owner).or_default() += 1;
        *by_site
            .entry((a.owner, a.thread.as_str(), a.site.as_str()))
            .or_default() += 1;
    }
    let per_request = |n: usize| n as f64 / MEASURED as f64;
    let counted: usize = by_owner.values().sum();
    println!(
        "{MEASURED} requests in {window:.1?}: {total} allocations ({:.2} per request), \
         {} allowed (not per request), {unrecorded} on threads ending (not attributed)",
        per_request(counted),
        attributed.iter().filter(|a| allowed(a)).count(),
    );
    for (owner, n) in &by_owner {
        println!("  {owner:?}: {:.2} per request", per_request(*n));
    }
    let mut sites: Vec<_> = by_site.iter().collect();
    sites.sort_by(|a, b| b.1.cmp(a.1));
    println!("call sites, most allocations first:");
    for ((owner, thread, site), n) in sites.iter().take(40) {
        println!("  {:6.2}  {owner:?} [{thread}] {site}", per_request(**n));
    }

    if std::env::var_os("ALLOC_STACKS").is_some() {
        let mut shown = std::collections::BTreeSet::new();
        for a in attributed.iter().filter(|a| !allowed(a)) {
            if shown.insert(a.site.as_str()) {
                println!(
                    "\n{:?} {}:\n    {}",
                    a.owner,
                    a.site,
                    a.stack.join("\n    ")
                );
            }
        }
    }
    let ours: Vec<_> = sites
        .iter()
        .filter(|((owner, ..), _)| *owner == Owner::Ours)
        .collect();
    assert!(
        ours.is_empty(),
        "the gateway's own code allocated on the request path: {ours:#?}"
    );
    let per_req = per_request(counted);
    assert!(
        per_req <= MAX_TOTAL_PER_REQUEST,
        "{per_req:.2} allocations per request, more than the {MAX_TOTAL_PER_REQUEST} measured"
    );
}
