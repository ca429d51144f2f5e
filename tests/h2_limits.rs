//! HTTP/2 gets the connection-level limits HTTP/1 has (issue "Hardening II", item 2): a cap
//! on concurrent streams, a header list bounded while it is read, an idle connection closed
//! after `keep_alive` (PINGs are not activity) or `client_header_timeout` (no request at all),
//! and GOAWAY for a client that resets streams rapidly (CVE-2023-44487).
//!
//! The client writes raw frames over h2c (prior knowledge) so it can do what a well-behaved
//! HTTP/2 library refuses to: exceed the advertised stream limit, never end a header block.

mod support;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};
use support::*;

const ROUTES: &str = r#"[{"path":"/{*rest}","upstream":"u"}]"#;

const DATA: u8 = 0;
const HEADERS: u8 = 1;
const RST_STREAM: u8 = 3;
const SETTINGS: u8 = 4;
const PING: u8 = 6;
const GOAWAY: u8 = 7;
const CONTINUATION: u8 = 9;

const END_STREAM: u8 = 0x1;
const ACK: u8 = 0x1;
const END_HEADERS: u8 = 0x4;

const SETTINGS_MAX_CONCURRENT_STREAMS: u16 = 0x3;
const REFUSED_STREAM: u32 = 0x7;
const CANCEL: u32 = 0x8;
const ENHANCE_YOUR_CALM: u32 = 0xb;

struct Frame {
    kind: u8,
    flags: u8,
    stream: u32,
    payload: Vec<u8>,
}

/// What reading the next frame gave.
enum Next {
    Frame(Frame),
    /// The gateway closed the connection (EOF or reset).
    Closed,
    /// Nothing arrived before the read timeout.
    Timeout,
}

/// A raw h2c client connection: preface sent, the server's SETTINGS read and acknowledged.
struct H2 {
    s: TcpStream,
    server_settings: Vec<(u16, u32)>,
}

impl H2 {
    fn connect(addr: SocketAddr) -> H2 {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_nodelay(true).unwrap();
        s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").unwrap();
        let mut h2 = H2 {
            s,
            server_settings: Vec::new(),
        };
        h2.send(SETTINGS, 0, 0, &[]);
        loop {
            match h2.next(Duration::from_secs(5)) {
                Next::Frame(f) if f.kind == SETTINGS && f.flags & ACK == 0 => {
                    h2.server_settings = f
                        .payload
                        .chunks(6)
                        .map(|c| {
                            (
                                u16::from_be_bytes([c[0], c[1]]),
                                u32::from_be_bytes([c[2], c[3], c[4], c[5]]),
                            )
                        })
                        .collect();
                    break;
                }
                Next::Frame(_) => continue,
                _ => panic!("no SETTINGS from the gateway"),
            }
        }
        // Settings apply once acknowledged; frames are handled in order, so every frame sent
        // after this one meets them.
        h2.send(SETTINGS, ACK, 0, &[]);
        h2
    }

    fn setting(&self, id: u16) -> Option<u32> {
        self.server_settings
            .iter()
            .find(|(i, _)| *i == id)
            .map(|(_, v)| *v)
    }

    fn send(&mut self, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
        self.try_send(kind, flags, stream, payload)
            .expect("write frame");
    }

    fn try_send(
        &mut self,
        kind: u8,
        flags: u8,
        stream: u32,
        payload: &[u8],
    ) -> std::io::Result<()> {
        let len = payload.len() as u32;
        let mut buf = Vec::with_capacity(9 + payload.len());
        buf.extend_from_slice(&len.to_be_bytes()[1..]);
        buf.push(kind);
        buf.push(flags);
        buf.extend_from_slice(&stream.to_be_bytes());
        buf.extend_from_slice(payload);
        self.s.write_all(&buf)
    }

    /// A complete GET for `path` that ends the stream.
    fn get(&mut self, stream: u32, path: &str) {
        self.send(
            HEADERS,
            END_HEADERS | END_STREAM,
            stream,
            &request_block(path),
        );
    }

    fn next(&mut self, timeout: Duration) -> Next {
        self.s.set_read_timeout(Some(timeout)).unwrap();
        let mut head = [0u8; 9];
        if let Err(e) = self.s.read_exact(&mut head) {
            return match e.kind() {
                ErrorKind::WouldBlock | ErrorKind::TimedOut => Next::Timeout,
                _ => Next::Closed,
            };
        }
        let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
        let mut payload = vec![0u8; len];
        if self.s.read_exact(&mut payload).is_err() {
            return Next::Closed;
        }
        Next::Frame(Frame {
            kind: head[3],
            flags: head[4],
            stream: u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff,
            payload,
        })
    }

    /// Reads frames (answering PINGs) until `until` returns true or `limit` passes; returns
    /// whether it did, and whether the gateway closed the connection meanwhile.
    fn read_until(
        &mut self,
        limit: Duration,
        mut until: impl FnMut(&Frame) -> bool,
    ) -> (bool, bool) {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return (false, false);
            }
            match self.next(left) {
                Next::Frame(f) => {
                    if f.kind == PING && f.flags & ACK == 0 {
                        let _ = self.try_send(PING, ACK, 0, &f.payload);
                    }
                    if until(&f) {
                        return (true, false);
                    }
                }
                Next::Closed => return (false, true),
                Next::Timeout => return (false, false),
            }
        }
    }
}

/// An HPACK string of `len` bytes' length prefix (7-bit prefix integer, no Huffman).
fn hpack_len(out: &mut Vec<u8>, len: usize) {
    if len < 127 {
        out.push(len as u8);
    } else {
        out.push(127);
        let mut rest = len - 127;
        while rest >= 128 {
            out.push((rest % 128) as u8 | 0x80);
            rest /= 128;
        }
        out.push(rest as u8);
    }
}

/// `GET http://x{path}` as an HPACK block: indexed `:method GET` and `:scheme http`, literal
/// `:path` and `:authority` without indexing.
fn request_block(path: &str) -> Vec<u8> {
    let mut b = vec![0x82, 0x86, 0x04];
    hpack_len(&mut b, path.len());
    b.extend_from_slice(path.as_bytes());
    b.push(0x01);
    hpack_len(&mut b, 1);
    b.push(b'x');
    b
}

fn gateway(upstream: &Upstream, server: &str) -> Gateway {
    let cfg = config(&upstream.url(), ROUTES, "")
        .replace(r#""workers":1"#, &format!(r#""workers":1,{server}"#));
    Gateway::start(&cfg)
}

fn error_code(payload: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([
        payload[at],
        payload[at + 1],
        payload[at + 2],
        payload[at + 3],
    ])
}

#[test]
fn max_concurrent_streams_is_advertised_and_enforced() {
    // Every request waits upstream, so all its streams stay open.
    let up = Upstream::start(|_| Reply::ok("slow").delay(Duration::from_secs(3)));
    let gw = gateway(&up, r#""keep_alive":"30s""#);
    let mut h2 = H2::connect(gw.addr);
    assert_eq!(h2.setting(SETTINGS_MAX_CONCURRENT_STREAMS), Some(128));
    for i in 0..129u32 {
        h2.get(2 * i + 1, &format!("/s{i}"));
    }
    let last = 2 * 128 + 1;
    let mut early = Vec::new();
    let (refused, _) = h2.read_until(Duration::from_secs(2), |f| {
        if f.kind == RST_STREAM && f.stream != last {
            early.push(f.stream);
        }
        f.kind == RST_STREAM && f.stream == last && error_code(&f.payload, 0) == REFUSED_STREAM
    });
    assert!(refused, "the 129th concurrent stream was not refused");
    assert!(
        early.is_empty(),
        "streams within the limit were reset: {early:?}"
    );
}

#[test]
fn configured_max_concurrent_streams_is_advertised() {
    let up = Upstream::start_ok();
    let gw = gateway(&up, r#""h2_max_concurrent_streams":7"#);
    let h2 = H2::connect(gw.addr);
    assert_eq!(h2.setting(SETTINGS_MAX_CONCURRENT_STREAMS), Some(7));
}

#[test]
fn idle_connection_is_closed_after_keep_alive_although_it_answers_pings() {
    let up = Upstream::start_ok();
    let gw = gateway(&up, r#""keep_alive":"1s","client_header_timeout":"30s""#);
    let mut h2 = H2::connect(gw.addr);
    h2.get(1, "/one");
    let (answered, _) = h2.read_until(Duration::from_secs(5), |f| {
        f.stream == 1 && (f.kind == DATA || f.kind == HEADERS) && f.flags & END_STREAM != 0
    });
    assert!(answered, "no response to the request");
    let idle = Instant::now();
    // PINGs are answered inside read_until; the connection is otherwise idle.
    let mut goaway = false;
    let (_, closed) = h2.read_until(Duration::from_secs(6), |f| {
        goaway |= f.kind == GOAWAY;
        false
    });
    let after = idle.elapsed();
    assert!(
        goaway && closed,
        "idle connection not closed with GOAWAY (goaway {goaway}, closed {closed})"
    );
    assert!(
        after >= Duration::from_millis(800) && after < Duration::from_secs(4),
        "closed after {after:?}, expected about keep_alive (1s)"
    );
}

#[test]
fn connection_without_a_request_is_closed_after_client_header_timeout() {
    let up = Upstream::start_ok();
    let gw = gateway(&up, r#""keep_alive":"30s","client_header_timeout":"1s""#);
    let start = Instant::now();
    let mut h2 = H2::connect(gw.addr);
    let (_, closed) = h2.read_until(Duration::from_secs(6), |_| false);
    assert!(closed, "a connection that sent no request was held open");
    assert!(
        start.elapsed() < Duration::from_secs(4),
        "closed after {:?}",
        start.elapsed()
    );
}

#[test]
fn oversized_header_block_is_refused_while_it_is_read() {
    let up = Upstream::start_ok();
    let gw = gateway(&up, r#""max_header_size":"4KB""#);
    let mut h2 = H2::connect(gw.addr);
    // A header whose value claims 1 MB and never ends, sent in 1 KiB frames without
    // END_HEADERS: only a limit applied while the block is read can refuse it.
    let mut block = request_block("/big");
    block.push(0x00);
    hpack_len(&mut block, 5);
    block.extend_from_slice(b"x-big");
    hpack_len(&mut block, 1 << 20);
    block.resize(1024, b'a');
    let mut sent = block.len();
    let mut result = h2.try_send(HEADERS, END_STREAM, 1, &block);
    for _ in 0..63 {
        if result.is_err() {
            break;
        }
        result = h2.try_send(CONTINUATION, 0, 1, &[b'a'; 1024]);
        sent += 1024;
    }
    let (refused, closed) = h2.read_until(Duration::from_secs(3), |f| {
        f.kind == GOAWAY
            || (f.kind == RST_STREAM && f.stream == 1)
            || (f.kind == HEADERS && f.stream == 1)
    });
    assert!(
        refused || closed,
        "a {sent}-byte unfinished header block (limit 4KB) was still being read"
    );
}

#[test]
fn rapid_reset_is_disconnected_with_goaway() {
    // Requests wait upstream, so each stream is still unanswered when the client resets it.
    let up = Upstream::start(|_| Reply::ok("slow").delay(Duration::from_secs(5)));
    let gw = gateway(&up, r#""keep_alive":"30s""#);
    let mut h2 = H2::connect(gw.addr);
    let calm = |f: &Frame| f.kind == GOAWAY && error_code(&f.payload, 4) == ENHANCE_YOUR_CALM;
    let mut opened = 0;
    let mut goaway = false;
    for i in 0..400u32 {
        let id = 2 * i + 1;
        if h2
            .try_send(HEADERS, END_HEADERS | END_STREAM, id, &request_block("/r"))
            .is_err()
        {
            break;
        }
        // Let the gateway accept the stream before the reset (h2's own cap covers streams
        // reset before they are accepted), watching for the GOAWAY meanwhile.
        let (calmed, closed) = h2.read_until(Duration::from_millis(3), calm);
        if calmed || closed {
            goaway = calmed;
            break;
        }
        if h2
            .try_send(RST_STREAM, 0, id, &CANCEL.to_be_bytes())
            .is_err()
        {
            break;
        }
        opened += 1;
    }
    if !goaway {
        goaway = h2.read_until(Duration::from_secs(3), calm).0;
    }
    assert!(
        goaway,
        "no GOAWAY(ENHANCE_YOUR_CALM) after {opened} open-and-reset streams"
    );
    assert!(opened < 200, "GOAWAY only after {opened} resets");
}
