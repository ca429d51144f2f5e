//! HTTP/1.1 to upstreams, the gateway's own client side of it: a request is written and its
//! response read by the request's own task, on a connection it owns until the response body
//! ends (then the connection goes back to the worker's pool). WebSocket handshakes still go
//! through hyper (its upgrade machinery), and so does HTTP/2 ([`super::h2`]).
//!
//! Why not hyper here: hyper's HTTP/1.1 client runs each connection as a task of its own, so
//! every request crosses two channels (the request to the connection's task, the response
//! back) and wakes two tasks; its head is parsed into a header map of its own. callgrind,
//! `benches/load/callgrind.sh`: the connection task and the hand-offs were about 12.8k
//! instructions of a 44,075-instruction proxied request; with this module the request counts
//! 37,572, and 5.04 allocations instead of 11.0 (tests/allocations.rs).
//!
//! What it does, as RFC 9112 asks of a client:
//! - the request's framing as hyper chose it: no framing header for a body known to be empty,
//!   `Content-Length` for a body of known length, `Transfer-Encoding: chunked` otherwise; a
//!   request body that runs past or short of its declared length fails the exchange;
//! - the response's framing (6.3): no body for HEAD, 1xx, 204 and 304; `Transfer-Encoding`
//!   ending in chunked (with trailers, passed on as a trailers frame), or read to the end of
//!   the connection when it ends otherwise; `Content-Length` (all values equal); else read
//!   to the end of the connection. Interim 1xx responses are skipped.
//! - keep-alive: an HTTP/1.1 response without `Connection: close`, or an HTTP/1.0 one with
//!   `Connection: keep-alive`, whose body was read to its end, with the request body sent whole
//!   and no stray bytes after it; any other connection is closed.
//! - a request body that is still streaming when the response head arrives keeps streaming
//!   while the response body is read (a server may answer as it reads).
//!
//! Reads go into a per-thread buffer, of which each read's bytes are split off: the response
//! head's header values and the body's chunks are slices of it, and the buffer is reused in
//! place once they are all dropped. No allocation per request (tests/allocations.rs).
//!
//! An idle connection in the pool is not polled (no task of its own): the pool asks the
//! reactor whether it became readable (the server closed it, or sent bytes nobody asked for)
//! when it is checked out, and then reads to find out, without a system call otherwise.

use super::body::{ProxyBody, RequestBodyError};
use super::client::{ForwardError, SendError, Transport};
use crate::base::arena::{header_map, recycle, NameCache};
use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http_body::{Body as _, Frame};
use std::cell::RefCell;
use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::AsyncWrite;

/// Header fields accepted in a response head (hyper's default).
const MAX_HEADERS: usize = 100;
/// The per-thread read buffer's size; a read is offered at least [`READ_MIN`] bytes of it.
const ARENA_BLOCK: usize = 64 << 10;
const READ_MIN: usize = 16 << 10;
/// Longest chunk-size line (with its extensions) accepted.
const MAX_CHUNK_LINE: usize = 4096;
/// Idle connections kept per server per worker.
const POOL_IDLE_PER_SERVER: usize = 1024;
/// An idle connection older than this is closed instead of reused.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// How often a worker's pool drops its closed and expired connections, and the servers left
/// with none (checked when a connection is put back: one comparison per request).
const POOL_SWEEP_EVERY: Duration = Duration::from_secs(30);

thread_local! {
    static ARENA: RefCell<BytesMut> = RefCell::new(BytesMut::new());
    static POOL: RefCell<Pool> = RefCell::new(Pool::default());
    static NAMES: RefCell<NameCache<HeaderName>> = const { RefCell::new(NameCache::new()) };
}

/// An HTTP/1.1 connection to one server.
pub struct Conn {
    io: Transport,
    /// Bytes read and not yet used.
    rbuf: BytesMut,
    out: Out,
    /// Largest response head accepted, in bytes.
    max_head: usize,
    /// Whether any byte of the current response arrived (a reused connection that ends
    /// before one did was closed by the server while idle: the keep-alive race).
    read_any: bool,
}

/// What is still to be written: `buf[pos..]`, then `data`, then `tail`; then more of a
/// streamed body.
#[derive(Default)]
struct Out {
    buf: Vec<u8>,
    pos: usize,
    data: Bytes,
    tail: &'static [u8],
    body: Option<Outgoing>,
    /// Bytes were written since the request began.
    written: bool,
    /// TLS: records were written and may wait in the session's buffer.
    unflushed: bool,
    /// The whole request was written.
    done: bool,
}

impl Out {
    /// Stops writing the request (the connection is not reused after).
    fn abandon(&mut self) {
        self.buf.clear();
        self.pos = 0;
        self.data = Bytes::new();
        self.tail = b"";
        self.body = None;
        self.done = true;
    }
}

/// A streamed request body still being sent.
struct Outgoing {
    body: ProxyBody,
    chunked: bool,
    /// Bytes left of a declared length.
    left: Option<u64>,
}

/// Why writing the request stopped.
enum OutError {
    Io(io::Error),
    Body(RequestBodyError),
}

/// The failure of one exchange, with what the caller may do next.
pub(super) struct Failed {
    pub error: SendError,
    /// The request may go again on a new connection to the same server: nothing of it was
    /// written, or a reused connection ended before any byte of the response and the request
    /// is idempotent with a body that can be sent again (the keep-alive race, RFC 9112 9.3.1).
    pub again: bool,
    /// Some of the request was written.
    pub written: bool,
}

impl Conn {
    /// Boxed: it moves between the pool, the exchange and the response body.
    pub(super) fn new(io: Transport, max_head: usize) -> Box<Self> {
        Box::new(Conn {
            io,
            rbuf: BytesMut::new(),
            out: Out::default(),
            // At least 8 KiB; offsets into a head are u32s.
            max_head: max_head.clamp(8 << 10, 1 << 30),
            read_any: false,
        })
    }

    /// Whether an idle connection can take a request: the reactor has not seen it become
    /// readable, or a read finds nothing (a TLS session ticket, say) rather than its end or
    /// bytes nobody asked for.
    fn usable(&mut self) -> bool {
        if !self.rbuf.is_empty() {
            return false;
        }
        let Transport::Tcp(tcp) = &self.io else {
            return self.drained();
        };
        let mut cx = Context::from_waker(std::task::Waker::noop());
        match tcp.poll_read_ready(&mut cx) {
            Poll::Pending => true,
            Poll::Ready(Err(_)) => false,
            Poll::Ready(Ok(())) => self.poll_fill(&mut cx).is_pending(),
        }
    }

    /// Whether nothing more can be read now. Over TCP, `rbuf` being empty says so once a
    /// response ended (its last read was short, or the next finds nothing). Over TLS, rustls
    /// may hold decrypted bytes a read did not hand over (records that came in one TCP read):
    /// a read must find nothing, at the cost of a system call per response.
    fn drained(&mut self) -> bool {
        match self.io {
            Transport::Tcp(_) => true,
            Transport::Tls(_) => {
                let mut cx = Context::from_waker(std::task::Waker::noop());
                self.poll_fill(&mut cx).is_pending()
            }
        }
    }

    /// Reads more bytes into `rbuf`: into the thread's buffer when `rbuf` is empty (the
    /// usual case), else after what `rbuf` holds (a head or chunk line split across reads).
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let io = &mut self.io;
        let n = if self.rbuf.is_empty() {
            // Lets go of the buffer its last bytes were a part of, so that it can be reused.
            self.rbuf = BytesMut::new();
            ready!(ARENA.with_borrow_mut(|arena| {
                if arena.capacity() < READ_MIN {
                    // In place when every slice of it was dropped, else a new block.
                    arena.reserve(ARENA_BLOCK);
                }
                let n = ready!(read_buf(io, cx, arena))?;
                self.rbuf = arena.split();
                Poll::Ready(Ok::<_, io::Error>(n))
            }))?
        } else {
            if self.rbuf.capacity() - self.rbuf.len() < READ_MIN / 4 {
                self.rbuf.reserve(READ_MIN);
            }
            ready!(read_buf(io, cx, &mut self.rbuf))?
        };
        self.read_any |= n > 0;
        Poll::Ready(Ok(n))
    }

    /// Writes what is pending, then pulls the streamed body (if any) until it waits or ends.
    fn poll_out(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), OutError>> {
        loop {
            ready!(self.poll_write_pending(cx)).map_err(OutError::Io)?;
            let Some(o) = &mut self.out.body else {
                self.out.done = true;
                return Poll::Ready(Ok(()));
            };
            match ready!(Pin::new(&mut o.body).poll_frame(cx)) {
                None => {
                    if o.left.is_some_and(|n| n > 0) {
                        return Poll::Ready(Err(OutError::Body(RequestBodyError::Client(
                            "request body shorter than its Content-Length".into(),
                        ))));
                    }
                    if o.chunked {
                        self.out.buf.extend_from_slice(b"0\r\n\r\n");
                    }
                    self.out.body = None;
                }
                Some(Err(e)) => return Poll::Ready(Err(OutError::Body(e))),
                Some(Ok(frame)) => {
                    // Trailers have no place on an HTTP/1.1 request without `Trailer`
                    // (removed as hop-by-hop): dropped, as hyper drops them.
                    let Ok(data) = frame.into_data() else {
                        continue;
                    };
                    if data.is_empty() {
                        continue;
                    }
                    if let Some(left) = &mut o.left {
                        let Some(l) = left.checked_sub(data.len() as u64) else {
                            return Poll::Ready(Err(OutError::Body(RequestBodyError::Client(
                                "request body longer than its Content-Length".into(),
                            ))));
                        };
                        *left = l;
                    }
                    let complete = o.left == Some(0) && !o.chunked;
                    if o.chunked {
                        let mut hex = [0u8; 16];
                        self.out
                            .buf
                            .extend_from_slice(hex_len(data.len(), &mut hex));
                        self.out.buf.extend_from_slice(b"\r\n");
                        self.out.tail = b"\r\n";
                    }
                    self.out.data = data;
                    if complete {
                        // All its declared bytes: done once they are written, as hyper does
                        // (the body's end may come later, after the response).
                        self.out.body = None;
                    }
                }
            }
        }
    }

    /// Writes `buf[pos..]`, `data` and `tail` (one `writev` each time), then flushes TLS.
    fn poll_write_pending(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let o = &mut self.out;
        loop {
            let head = &o.buf[o.pos..];
            if head.is_empty() && o.data.is_empty() && o.tail.is_empty() {
                o.buf.clear();
                o.pos = 0;
                if o.unflushed {
                    ready!(self.io.poll_flush(cx))?;
                    o.unflushed = false;
                }
                return Poll::Ready(Ok(()));
            }
            let slices = [
                IoSlice::new(head),
                IoSlice::new(&o.data),
                IoSlice::new(o.tail),
            ];
            let mut n = ready!(self.io.poll_write_vectored(cx, &slices))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            o.written = true;
            o.unflushed = matches!(self.io, Transport::Tls(_));
            let k = n.min(head.len());
            o.pos += k;
            n -= k;
            let k = n.min(o.data.len());
            o.data.advance(k);
            n -= k;
            o.tail = &o.tail[n..];
        }
    }

    /// Reads until a final response head is complete (interim 1xx ones are skipped) and
    /// parses it into `map`: its status, version and length of head.
    fn poll_head(
        &mut self,
        cx: &mut Context<'_>,
        map: &mut HeaderMap,
    ) -> Poll<Result<Head, String>> {
        loop {
            if !self.rbuf.is_empty() {
                match parse_head(&mut self.rbuf, map) {
                    Ok(Some(head)) if head.status.is_informational() => {
                        if head.status == http::StatusCode::SWITCHING_PROTOCOLS {
                            return Poll::Ready(Err(
                                "101 to a request that asked for no upgrade".into()
                            ));
                        }
                        map.clear();
                        continue;
                    }
                    Ok(Some(head)) if head.len > self.max_head => {
                        return Poll::Ready(Err(format!(
                            "response head larger than {} bytes",
                            self.max_head
                        )))
                    }
                    Ok(Some(head)) => {
                        if self.rbuf.is_empty() {
                            // Lets go of the read buffer it was a part of.
                            self.rbuf = BytesMut::new();
                        }
                        return Poll::Ready(Ok(head));
                    }
                    Ok(None) if self.rbuf.len() >= self.max_head => {
                        return Poll::Ready(Err(format!(
                            "response head larger than {} bytes",
                            self.max_head
                        )))
                    }
                    Ok(None) => {}
                    Err(e) => return Poll::Ready(Err(e)),
                }
            }
            match ready!(self.poll_fill(cx)) {
                Ok(0) => {
                    return Poll::Ready(Err("connection closed before the response head".into()))
                }
                Ok(_) => {}
                Err(e) => return Poll::Ready(Err(format!("reading the response: {e}"))),
            }
        }
    }
}

/// `len` in hexadecimal, as a chunk size.
fn hex_len(len: usize, buf: &mut [u8; 16]) -> &[u8] {
    let mut i = buf.len();
    let mut n = len;
    loop {
        i -= 1;
        buf[i] = b"0123456789ABCDEF"[n & 15];
        n >>= 4;
        if n == 0 {
            return &buf[i..];
        }
    }
}

/// Reads into the spare room of `buf` (which the caller makes).
fn read_buf(
    io: &mut Transport,
    cx: &mut Context<'_>,
    buf: &mut BytesMut,
) -> Poll<io::Result<usize>> {
    match io {
        Transport::Tcp(s) => tokio_util::io::poll_read_buf(Pin::new(s), cx, buf),
        Transport::Tls(s) => tokio_util::io::poll_read_buf(Pin::new(&mut **s), cx, buf),
    }
}

impl Transport {
    fn poll_write_vectored(
        &mut self,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self {
            Transport::Tcp(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Transport::Tls(s) => Pin::new(&mut **s).poll_write_vectored(cx, bufs),
        }
    }

    fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self {
            Transport::Tcp(_) => Poll::Ready(Ok(())),
            Transport::Tls(s) => Pin::new(&mut **s).poll_flush(cx),
        }
    }
}

/// A parsed response head.
struct Head {
    status: http::StatusCode,
    version: http::Version,
    /// Its length in bytes.
    len: usize,
}

/// Parses a complete response head at the start of `buf` into `map` and consumes it; `None`
/// while it is incomplete. Header values are slices of the head's bytes.
fn parse_head(buf: &mut BytesMut, map: &mut HeaderMap) -> Result<Option<Head>, String> {
    let mut fields = [MaybeUninit::<httparse::Header<'_>>::uninit(); MAX_HEADERS];
    let mut res = httparse::Response::new(&mut []);
    // Offsets of each field's name and value in the head.
    let mut at = [[0u32; 4]; MAX_HEADERS];
    let base = buf.as_ptr() as usize;
    let parsed = httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut res,
        buf,
        &mut fields,
    );
    let (len, status, version, count) = match parsed {
        Ok(httparse::Status::Complete(len)) => {
            for (slot, f) in at.iter_mut().zip(res.headers.iter()) {
                let name = f.name.as_ptr() as usize - base;
                let value = f.value.as_ptr() as usize - base;
                *slot = [
                    name as u32,
                    f.name.len() as u32,
                    value as u32,
                    f.value.len() as u32,
                ];
            }
            let status = res.code.unwrap_or(0);
            let version = match res.version {
                Some(0) => http::Version::HTTP_10,
                _ => http::Version::HTTP_11,
            };
            (len, status, version, res.headers.len())
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(format!("invalid response head: {e}")),
    };
    let status =
        http::StatusCode::from_u16(status).map_err(|_| "invalid status code".to_string())?;
    let head = buf.split_to(len).freeze();
    NAMES.with_borrow_mut(|names| {
        for &[n, nl, v, vl] in &at[..count] {
            let (n, nl, v, vl) = (n as usize, nl as usize, v as usize, vl as usize);
            let name = names
                .get(&head[n..n + nl], HeaderName::as_str, |b| {
                    HeaderName::from_bytes(b).ok()
                })
                .ok_or("invalid header name")?;
            let value = HeaderValue::from_maybe_shared(head.slice(v..v + vl))
                .map_err(|_| "invalid header value".to_string())?;
            map.append(name, value);
        }
        Ok::<_, String>(())
    })?;
    Ok(Some(Head {
        status,
        version,
        len,
    }))
}

/// Whether a comma-separated header (all its fields) lists `token`.
fn has_token(map: &HeaderMap, name: HeaderName, token: &str) -> bool {
    map.get_all(name).iter().any(|v| {
        v.as_bytes()
            .split(|&b| b == b',')
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
    })
}

/// The declared length of a message: `Ok(None)` without `Content-Length`, an error for an
/// invalid one or values that disagree.
fn content_length(map: &HeaderMap) -> Result<Option<u64>, ()> {
    let mut len = None;
    for v in map.get_all(header::CONTENT_LENGTH) {
        for part in v.as_bytes().split(|&b| b == b',') {
            let part = part.trim_ascii();
            if part.is_empty() || part.len() > 19 || !part.iter().all(u8::is_ascii_digit) {
                return Err(());
            }
            let n = part.iter().fold(0u64, |n, &d| n * 10 + u64::from(d - b'0'));
            if len.is_some_and(|l| l != n) {
                return Err(());
            }
            len = Some(n);
        }
    }
    Ok(len)
}

/// Writes the request head to `out` and chooses the body's framing, as hyper does.
fn encode_request(out: &mut Out, req: &mut http::Request<ProxyBody>) -> Result<(), ForwardError> {
    let buf = &mut out.buf;
    buf.clear();
    out.pos = 0;
    out.written = false;
    out.done = false;
    buf.extend_from_slice(req.method().as_str().as_bytes());
    buf.push(b' ');
    let target = req.uri().path_and_query().map_or("/", |pq| pq.as_str());
    buf.extend_from_slice(if target.is_empty() {
        b"/"
    } else {
        target.as_bytes()
    });
    buf.extend_from_slice(b" HTTP/1.1\r\n");
    let (end, exact) = (req.body().is_end_stream(), req.body().size_hint().exact());
    // The body's framing: what the headers say, else what the body knows of itself.
    let mut length = None;
    let mut chunked = false;
    let mut add_length = None;
    if end {
        req.headers_mut().remove(header::TRANSFER_ENCODING);
    } else if req.headers().contains_key(header::TRANSFER_ENCODING) {
        if !has_token(req.headers(), header::TRANSFER_ENCODING, "chunked") {
            return Err(ForwardError::Protocol(
                "request Transfer-Encoding does not end in chunked".into(),
            ));
        }
        req.headers_mut().remove(header::CONTENT_LENGTH);
        chunked = true;
    } else {
        match content_length(req.headers()) {
            Ok(Some(n)) => length = Some(n),
            _ => {
                req.headers_mut().remove(header::CONTENT_LENGTH);
                match exact {
                    Some(n) => {
                        length = Some(n);
                        add_length = Some(n);
                    }
                    None => {
                        buf.extend_from_slice(b"transfer-encoding: chunked\r\n");
                        chunked = true;
                    }
                }
            }
        }
    }
    for (name, value) in req.headers() {
        buf.extend_from_slice(name.as_str().as_bytes());
        buf.extend_from_slice(b": ");
        buf.extend_from_slice(value.as_bytes());
        buf.extend_from_slice(b"\r\n");
    }
    if let Some(n) = add_length {
        buf.extend_from_slice(b"content-length: ");
        buf.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
        buf.extend_from_slice(b"\r\n");
    }
    buf.extend_from_slice(b"\r\n");
    match std::mem::replace(req.body_mut(), ProxyBody::Empty) {
        ProxyBody::Empty => {}
        ProxyBody::Full(b) => {
            let b = b.unwrap_or_default();
            if length.is_some_and(|n| n != b.len() as u64) {
                return Err(ForwardError::Body(
                    "request body length differs from its Content-Length".into(),
                ));
            }
            out.data = b.clone();
            // Kept in the request: it can be sent again.
            *req.body_mut() = ProxyBody::Full(Some(b));
        }
        stream => {
            out.body = Some(Outgoing {
                body: stream,
                chunked,
                left: length,
            })
        }
    }
    Ok(())
}

/// How the rest of a response body is framed.
enum Framing {
    /// Bytes left of its `Content-Length`.
    Length(u64),
    Chunked(Chunk),
    /// Until the server closes the connection.
    Close,
    Done,
}

#[derive(Clone, Copy)]
enum Chunk {
    /// Before a chunk-size line.
    Size,
    /// Bytes left of a chunk.
    Data(u64),
    /// The CRLF after a chunk's data.
    DataEnd,
    /// After the last chunk: trailer fields, then an empty line.
    Trailers,
}

/// An upstream's response body on a connection of ours.
pub struct Body {
    conn: Option<Box<Conn>>,
    framing: Framing,
    key: u64,
    keep_alive: bool,
}

/// A response body that could not be read to its end.
#[derive(Debug, thiserror::Error)]
#[error("upstream response body: {0}")]
pub struct BodyError(String);

impl Body {
    /// The body is over: the connection goes back to the pool when it can take another
    /// request, else it is closed.
    fn finish(&mut self) {
        self.framing = Framing::Done;
        let Some(mut conn) = self.conn.take() else {
            return;
        };
        if self.keep_alive && conn.rbuf.is_empty() {
            // Lets go of the read buffer it was a part of.
            conn.rbuf = BytesMut::new();
        }
        if self.keep_alive && conn.out.done && conn.rbuf.is_empty() && conn.drained() {
            POOL.with_borrow_mut(|p| p.put(self.key, conn));
        }
    }

    fn fail(&mut self, why: String) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        self.framing = Framing::Done;
        self.conn = None;
        Poll::Ready(Some(Err(BodyError(why))))
    }

    /// Data of at most `max` bytes from what was read.
    fn take(conn: &mut Conn, max: u64) -> Bytes {
        let n = conn
            .rbuf
            .len()
            .min(usize::try_from(max).unwrap_or(usize::MAX));
        conn.rbuf.split_to(n).freeze()
    }
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        loop {
            let Some(conn) = this.conn.as_mut() else {
                return Poll::Ready(None);
            };
            if !conn.out.done {
                // The request body goes on; a failure ends it, and the connection's reuse.
                if let Poll::Ready(Err(_)) = conn.poll_out(cx) {
                    conn.out.abandon();
                    this.keep_alive = false;
                }
            }
            let need_more = match &mut this.framing {
                Framing::Done => return Poll::Ready(None),
                Framing::Length(left) => {
                    if conn.rbuf.is_empty() {
                        true
                    } else {
                        let data = Self::take(conn, *left);
                        *left -= data.len() as u64;
                        if *left == 0 {
                            this.finish();
                        }
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                }
                Framing::Close => {
                    if conn.rbuf.is_empty() {
                        true
                    } else {
                        return Poll::Ready(Some(Ok(Frame::data(Self::take(conn, u64::MAX)))));
                    }
                }
                Framing::Chunked(state) => match chunk_step(conn, state) {
                    Err(e) => return this.fail(e),
                    Ok(Step::More) => true,
                    Ok(Step::Again) => false,
                    Ok(Step::Data(data)) => {
                        // The last chunk's end already read: the body ends with this data.
                        if matches!(state, Chunk::DataEnd)
                            && conn.rbuf.starts_with(b"\r\n0\r\n\r\n")
                        {
                            conn.rbuf.advance(7);
                            this.finish();
                        }
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                    Ok(Step::End(trailers)) => {
                        this.finish();
                        return match trailers {
                            Some(map) => Poll::Ready(Some(Ok(Frame::trailers(map)))),
                            None => Poll::Ready(None),
                        };
                    }
                },
            };
            if need_more {
                match ready!(conn.poll_fill(cx)) {
                    Ok(0) if matches!(this.framing, Framing::Close) => {
                        this.keep_alive = false;
                        this.finish();
                        return Poll::Ready(None);
                    }
                    Ok(0) => return this.fail("connection closed before the body ended".into()),
                    Ok(_) => {}
                    Err(e) => return this.fail(format!("reading the body: {e}")),
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.framing, Framing::Done)
    }

    fn size_hint(&self) -> http_body::SizeHint {
        match self.framing {
            Framing::Length(n) => http_body::SizeHint::with_exact(n),
            Framing::Done => http_body::SizeHint::with_exact(0),
            _ => http_body::SizeHint::default(),
        }
    }
}

/// One step of chunked decoding over what was read.
enum Step {
    /// Needs more bytes.
    More,
    /// Moved on; step again.
    Again,
    Data(Bytes),
    /// The body ended, with its trailers if it had any.
    End(Option<HeaderMap>),
}

/// A chunk-size line (the size, extensions, which are ignored, and CRLF) at the start of
/// `buf`: its length and the size; `None` while it is incomplete. As strict as hyper: a size
/// digit first, CRLF at the end and no LF before it.
fn chunk_size_line(buf: &[u8]) -> Result<Option<(usize, u64)>, String> {
    match httparse::parse_chunk_size(buf) {
        Ok(httparse::Status::Complete((line, size)))
            if buf[0].is_ascii_hexdigit()
                && line >= 3
                && &buf[line - 2..line] == b"\r\n"
                && !buf[..line - 2].contains(&b'\n') =>
        {
            Ok(Some((line, size)))
        }
        Ok(httparse::Status::Complete(_)) => Err("invalid chunk-size line".into()),
        Ok(httparse::Status::Partial) if buf.len() > MAX_CHUNK_LINE => {
            Err("chunk-size line too long".into())
        }
        Ok(httparse::Status::Partial) => Ok(None),
        Err(_) => Err("invalid chunk size".into()),
    }
}

fn chunk_step(conn: &mut Conn, state: &mut Chunk) -> Result<Step, String> {
    let buf = &mut conn.rbuf;
    match *state {
        Chunk::Size => {
            let Some((line, size)) = chunk_size_line(buf)? else {
                return Ok(Step::More);
            };
            buf.advance(line);
            *state = if size == 0 {
                Chunk::Trailers
            } else {
                Chunk::Data(size)
            };
            Ok(Step::Again)
        }
        Chunk::Data(left) => {
            if buf.is_empty() {
                return Ok(Step::More);
            }
            let data = Body::take(conn, left);
            let left = left - data.len() as u64;
            *state = if left == 0 {
                Chunk::DataEnd
            } else {
                Chunk::Data(left)
            };
            Ok(Step::Data(data))
        }
        Chunk::DataEnd => {
            if buf.len() < 2 {
                return Ok(Step::More);
            }
            if &buf[..2] != b"\r\n" {
                return Err("chunk data without its CRLF".into());
            }
            buf.advance(2);
            *state = Chunk::Size;
            Ok(Step::Again)
        }
        Chunk::Trailers => {
            if buf.starts_with(b"\r\n") {
                buf.advance(2);
                return Ok(Step::End(None));
            }
            let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                if buf.len() > conn.max_head {
                    return Err("trailers too large".into());
                }
                return Ok(Step::More);
            };
            let block = buf.split_to(end + 4).freeze();
            let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let parsed = match httparse::parse_headers(&block, &mut fields) {
                Ok(httparse::Status::Complete((_, fields))) => fields,
                _ => return Err("invalid trailers".into()),
            };
            let mut map = HeaderMap::with_capacity(parsed.len());
            let base = block.as_ptr() as usize;
            for f in parsed {
                let Ok(name) = HeaderName::from_bytes(f.name.as_bytes()) else {
                    return Err("invalid trailer name".into());
                };
                let at = f.value.as_ptr() as usize - base;
                let Ok(value) = HeaderValue::from_maybe_shared(block.slice(at..at + f.value.len()))
                else {
                    return Err("invalid trailer value".into());
                };
                map.append(name, value);
            }
            Ok(Step::End(Some(map)))
        }
    }
}

/// Sends `req` on `conn` (a pooled one when `reused`) and waits for the response head; the
/// response's body holds the connection and returns it to pool `key` when it ends.
pub(super) async fn exchange(
    mut conn: Box<Conn>,
    mut req: http::Request<ProxyBody>,
    key: u64,
    reused: bool,
) -> Result<http::Response<Body>, Failed> {
    conn.read_any = false;
    // Whether the body can be sent again (encoding moves a streamed one into the connection).
    let replayable = matches!(req.body(), ProxyBody::Empty | ProxyBody::Full(_));
    if let Err(error) = encode_request(&mut conn.out, &mut req) {
        return Err(Failed {
            error: error.into(),
            again: false,
            written: false,
        });
    }
    let mut map = header_map();
    let mut write_error = None;
    let head = std::future::poll_fn(|cx| {
        if write_error.is_none() && !conn.out.done {
            match conn.poll_out(cx) {
                // The server may have answered and closed its side: read on.
                Poll::Ready(Err(OutError::Io(e))) => write_error = Some(e),
                Poll::Ready(Err(OutError::Body(e))) => return Poll::Ready(Err(Err(e))),
                _ => {}
            }
        }
        conn.poll_head(cx, &mut map).map_err(Ok)
    })
    .await;
    let head = match head {
        Ok(head) => head,
        Err(Err(body)) => {
            return Err(Failed {
                error: ForwardError::Body(body.to_string()).into(),
                again: false,
                written: true,
            })
        }
        Err(Ok(why)) => {
            let written = conn.out.written;
            let stale = reused && !conn.read_any;
            let why = match write_error {
                Some(e) if !conn.read_any => format!("writing the request: {e}"),
                _ => why,
            };
            // Nothing written: it can go anywhere. A reused connection closed before any
            // byte of the response: again on a new one, when that is safe.
            if !written {
                if let Some(o) = conn.out.body.take() {
                    *req.body_mut() = o.body;
                }
            }
            let again = !written || (stale && replayable && req.method().is_idempotent());
            recycle(map);
            return Err(Failed {
                error: SendError {
                    error: ForwardError::Protocol(why),
                    unsent: again.then_some(req),
                },
                again,
                written,
            });
        }
    };
    if write_error.is_some() {
        conn.out.abandon();
    }
    // The request's map serves a later response.
    recycle(std::mem::take(req.headers_mut()));
    let keep_alive = write_error.is_none()
        && match head.version {
            http::Version::HTTP_10 => has_token(&map, header::CONNECTION, "keep-alive"),
            _ => !has_token(&map, header::CONNECTION, "close"),
        };
    let no_body = req.method() == http::Method::HEAD
        || head.status == http::StatusCode::NO_CONTENT
        || head.status == http::StatusCode::NOT_MODIFIED;
    let (framing, keep_alive) = if no_body {
        (Framing::Length(0), keep_alive)
    } else if map.contains_key(header::TRANSFER_ENCODING) {
        if head.version == http::Version::HTTP_10 {
            return Err(protocol("Transfer-Encoding in an HTTP/1.0 response"));
        }
        // RFC 9112 6.3: chunked when it is the last coding, else read to the close.
        let last_chunked = map
            .get_all(header::TRANSFER_ENCODING)
            .iter()
            .next_back()
            .and_then(|v| v.as_bytes().rsplit(|&b| b == b',').next())
            .is_some_and(|t| t.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        match last_chunked {
            true => (Framing::Chunked(Chunk::Size), keep_alive),
            false => (Framing::Close, false),
        }
    } else {
        match content_length(&map) {
            Ok(Some(n)) => (Framing::Length(n), keep_alive),
            Ok(None) => (Framing::Close, false),
            Err(()) => return Err(protocol("invalid Content-Length")),
        }
    };
    let mut body = Body {
        conn: Some(conn),
        framing,
        key,
        keep_alive,
    };
    if matches!(body.framing, Framing::Length(0)) {
        body.finish();
    }
    let mut res = http::Response::new(body);
    *res.status_mut() = head.status;
    *res.version_mut() = head.version;
    *res.headers_mut() = map;
    Ok(res)
}

fn protocol(why: &str) -> Failed {
    Failed {
        error: ForwardError::Protocol(why.into()).into(),
        again: false,
        written: true,
    }
}

/// A connection from this worker's pool for `key`, if one is idle and usable.
pub(super) fn checkout(key: u64) -> Option<Box<Conn>> {
    POOL.with_borrow_mut(|p| p.checkout(key))
}

/// Puts a new connection (an "auto" server that chose HTTP/1.1) in this worker's pool.
pub(super) fn pool_put(key: u64, conn: Box<Conn>) {
    POOL.with_borrow_mut(|p| p.put(key, conn));
}

#[derive(Default)]
struct Pool {
    idle: rustc_hash::FxHashMap<u64, VecDeque<(Instant, Box<Conn>)>>,
    /// When the pool was last swept; `None` before the first put.
    swept: Option<Instant>,
}

impl Pool {
    fn checkout(&mut self, key: u64) -> Option<Box<Conn>> {
        let slot = self.idle.get_mut(&key)?;
        while let Some((since, mut conn)) = slot.pop_back() {
            if since.elapsed() < POOL_IDLE_TIMEOUT && conn.usable() {
                return Some(conn);
            }
        }
        None
    }

    fn put(&mut self, key: u64, conn: Box<Conn>) {
        let now = Instant::now();
        match self.swept {
            Some(t) if now.saturating_duration_since(t) < POOL_SWEEP_EVERY => {}
            Some(_) => self.sweep(now),
            None => self.swept = Some(now),
        }
        let slot = self.idle.entry(key).or_default();
        while slot
            .front()
            .is_some_and(|(since, _)| now.duration_since(*since) >= POOL_IDLE_TIMEOUT)
        {
            slot.pop_front();
        }
        if slot.len() < POOL_IDLE_PER_SERVER {
            slot.push_back((now, conn));
        }
    }

    /// Drops the idle connections that are closed or older than [`POOL_IDLE_TIMEOUT`], and
    /// the servers left with none: the connections to a server that left its upstream (a
    /// pod that went away) are closed by the next sweep after they expire, and its entry goes.
    fn sweep(&mut self, now: Instant) {
        self.swept = Some(now);
        self.idle.retain(|_, slot| {
            slot.retain_mut(|(since, c)| {
                now.saturating_duration_since(*since) < POOL_IDLE_TIMEOUT && c.usable()
            });
            !slot.is_empty()
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_sizes_are_hexadecimal() {
        let mut buf = [0u8; 16];
        assert_eq!(hex_len(0, &mut buf), b"0");
        assert_eq!(hex_len(255, &mut buf), b"FF");
        assert_eq!(hex_len(4096, &mut buf), b"1000");
        assert_eq!(hex_len(usize::MAX, &mut buf), b"FFFFFFFFFFFFFFFF");
    }

    #[test]
    fn chunk_size_lines_are_as_strict_as_hyper() {
        assert_eq!(chunk_size_line(b"1a\r\ndata"), Ok(Some((4, 26))));
        assert_eq!(chunk_size_line(b"5;name=value\r\n"), Ok(Some((14, 5))));
        assert_eq!(chunk_size_line(b"0\r\n\r\n"), Ok(Some((3, 0))));
        assert_eq!(chunk_size_line(b"1a"), Ok(None));
        // An empty line is no last chunk; LF alone ends no line, in the size or an extension.
        assert!(chunk_size_line(b"\r\n\r\n").is_err());
        assert!(chunk_size_line(b"5\nhello").is_err());
        assert!(chunk_size_line(b"5;a\nX\r\nhello").is_err());
        assert!(chunk_size_line(b"x\r\n").is_err());
        assert!(chunk_size_line(b"1ffffffffffffffff\r\n").is_err());
        assert!(chunk_size_line(&[b'1'; MAX_CHUNK_LINE + 1]).is_err());
    }

    /// A streamed body cannot be sent twice: a reused connection that ends before the
    /// response does not send such a request again (it would go without its body).
    #[test]
    fn a_streamed_request_is_not_sent_again_after_the_keep_alive_race() {
        // Servers that read the request head and close without an answer.
        let (addr, first) = server(vec![(vec![], true)]);
        let (addr2, second) = server(vec![(vec![], true)]);
        actix_web::rt::System::new().block_on(async move {
            let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            let (tx, rx) = tokio::sync::mpsc::channel(2);
            tx.send(Ok(Bytes::from_static(b"part"))).await.unwrap();
            drop(tx);
            let mut req = get("/put");
            *req.method_mut() = http::Method::PUT;
            *req.body_mut() = ProxyBody::Stream {
                rx,
                len: Some(4),
                trailers: None,
            };
            let conn = Conn::new(Transport::Tcp(tcp), 8 << 10);
            let failed = exchange(conn, req, 10, true).await.err().unwrap();
            assert!(failed.written);
            assert!(!failed.again && failed.error.unsent.is_none());
            // The same with a body kept whole: sent again.
            let tcp = tokio::net::TcpStream::connect(addr2).await.unwrap();
            let mut req = get("/put");
            *req.method_mut() = http::Method::PUT;
            *req.body_mut() = ProxyBody::Full(Some(Bytes::from_static(b"part")));
            let conn = Conn::new(Transport::Tcp(tcp), 8 << 10);
            let failed = exchange(conn, req, 10, true).await.err().unwrap();
            assert!(failed.again);
            let again = failed.error.unsent.unwrap();
            assert!(matches!(again.body(), ProxyBody::Full(Some(b)) if &b[..] == b"part"));
            assert_eq!(again.headers()["host"], "up.test");
        });
        drop((first, second));
    }

    #[test]
    fn content_lengths_must_agree_and_be_digits() {
        let map = |vals: &[&str]| {
            let mut m = HeaderMap::new();
            for v in vals {
                m.append(header::CONTENT_LENGTH, HeaderValue::from_str(v).unwrap());
            }
            m
        };
        assert_eq!(content_length(&map(&[])), Ok(None));
        assert_eq!(content_length(&map(&["12"])), Ok(Some(12)));
        assert_eq!(content_length(&map(&["12", "12"])), Ok(Some(12)));
        assert_eq!(content_length(&map(&["12, 12"])), Ok(Some(12)));
        assert_eq!(content_length(&map(&["12", "13"])), Err(()));
        assert_eq!(content_length(&map(&["+12"])), Err(()));
        assert_eq!(content_length(&map(&["0x1"])), Err(()));
        assert_eq!(content_length(&map(&[""])), Err(()));
    }

    #[test]
    fn heads_parse_into_the_map_and_leave_the_body() {
        let mut buf = BytesMut::from(
            &b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\nX-Custom: a b\r\nx-custom: c\r\n\r\nok"
                [..],
        );
        let mut map = HeaderMap::new();
        let head = parse_head(&mut buf, &mut map).unwrap().unwrap();
        assert_eq!(head.status, 201);
        assert_eq!(head.version, http::Version::HTTP_11);
        assert_eq!(&buf[..], b"ok");
        assert_eq!(map["content-length"], "2");
        let custom: Vec<_> = map.get_all("x-custom").iter().collect();
        assert_eq!(custom, ["a b", "c"]);
        let mut partial = BytesMut::from(&b"HTTP/1.0 200 OK\r\nA: b\r\n"[..]);
        assert!(parse_head(&mut partial, &mut HeaderMap::new())
            .unwrap()
            .is_none());
        let mut bad = BytesMut::from(&b"HTTP/1.1 2000 OK\r\n\r\n"[..]);
        assert!(parse_head(&mut bad, &mut HeaderMap::new()).is_err());
    }

    /// A server on loopback that answers each request on one connection with the next
    /// script: its pieces written apart, a pause between them (so they arrive in separate
    /// reads); `None` closes the connection after the response.
    fn server(
        scripts: Vec<(Vec<&'static [u8]>, bool)>,
    ) -> (std::net::SocketAddr, std::thread::JoinHandle<Vec<String>>) {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let handle = std::thread::spawn(move || {
            let mut heads = Vec::new();
            let (mut s, _) = listener.accept().unwrap();
            let mut buf = Vec::new();
            for (pieces, close) in scripts {
                let end = loop {
                    if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        break i + 4;
                    }
                    let mut chunk = [0u8; 4096];
                    let n = s.read(&mut chunk).unwrap();
                    assert!(n > 0, "the client closed early");
                    buf.extend_from_slice(&chunk[..n]);
                };
                heads.push(String::from_utf8_lossy(&buf[..end]).into_owned());
                buf.drain(..end);
                for piece in pieces {
                    s.write_all(piece).unwrap();
                    std::thread::sleep(Duration::from_millis(30));
                }
                if close {
                    return heads;
                }
            }
            heads
        });
        (addr, handle)
    }

    /// Reads a whole body: its data and its trailers.
    async fn read_all(mut body: Body) -> (Vec<u8>, Option<HeaderMap>, Body) {
        let (mut data, mut trailers) = (Vec::new(), None);
        while let Some(frame) = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await
        {
            match frame.unwrap().into_data() {
                Ok(d) => data.extend_from_slice(&d),
                Err(f) => trailers = f.into_trailers().ok(),
            }
        }
        (data, trailers, body)
    }

    fn get(path: &str) -> http::Request<ProxyBody> {
        let mut req = http::Request::new(ProxyBody::Empty);
        *req.uri_mut() = http::Uri::try_from(path).unwrap();
        req.headers_mut()
            .insert(header::HOST, HeaderValue::from_static("up.test"));
        req
    }

    #[test]
    fn responses_are_framed_as_rfc_9112_says_and_connections_reused_only_when_whole() {
        let (addr, server) = server(vec![
            // An interim 100, then a body of known length with a custom header.
            (
                vec![
                    b"HTTP/1.1 100 Continue\r\n\r\n",
                    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Tag: a\r\n\r\nhe",
                    b"llo",
                ],
                false,
            ),
            // Chunked, split inside a size line and a chunk, with an extension and trailers.
            (
                vec![
                    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel",
                    b"lo\r\n1",
                    b"0;ext=1\r\n0123456789abcdef\r\n0\r\nX-Sum: 21\r\n\r\n",
                ],
                false,
            ),
            // HTTP/1.0 without a length: until the server closes.
            (vec![b"HTTP/1.0 200 OK\r\n\r\nuntil ", b"the end"], true),
        ]);
        actix_web::rt::System::new().block_on(async move {
            let key = 7;
            let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            let conn = Conn::new(Transport::Tcp(tcp), 8 << 10);
            let res = exchange(conn, get("/one"), key, false).await.ok().unwrap();
            assert_eq!(res.status(), 200);
            assert_eq!(res.headers()["x-tag"], "a");
            let (data, trailers, body) = read_all(res.into_body()).await;
            assert_eq!((&data[..], trailers), (&b"hello"[..], None));
            assert!(body.is_end_stream());
            let conn = checkout(key).expect("a whole response: the connection is pooled");
            let res = exchange(conn, get("/two"), key, true).await.ok().unwrap();
            let (data, trailers, _) = read_all(res.into_body()).await;
            assert_eq!(&data[..], b"hello0123456789abcdef");
            assert_eq!(trailers.unwrap()["x-sum"], "21");
            let conn = checkout(key).expect("pooled after the chunked body");
            let res = exchange(conn, get("/three"), key, true).await.ok().unwrap();
            assert_eq!(res.version(), http::Version::HTTP_10);
            let (data, _, _) = read_all(res.into_body()).await;
            assert_eq!(&data[..], b"until the end");
            assert!(checkout(key).is_none(), "read to its close: not pooled");
        });
        let heads = server.join().unwrap();
        assert_eq!(heads.len(), 3);
        assert!(
            heads[0].starts_with("GET /one HTTP/1.1\r\nhost: up.test\r\n"),
            "{heads:?}"
        );
        assert!(!heads[0].contains("content-length"), "{heads:?}");
    }

    /// A response cannot desynchronise the pool: bytes after the body its framing gives
    /// (a second response nobody asked for) close the connection; a head whose framing is
    /// invalid fails the exchange.
    #[test]
    fn a_connection_is_reused_only_after_a_response_that_ended_where_its_framing_says() {
        let (addr, first) = server(vec![(
            vec![b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nforged"],
            false,
        )]);
        let (bad, bad_server) = server(vec![(
            vec![b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok"],
            true,
        )]);
        actix_web::rt::System::new().block_on(async move {
            let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            let conn = Conn::new(Transport::Tcp(tcp), 8 << 10);
            let res = exchange(conn, get("/a"), 8, false).await.ok().unwrap();
            let (data, _, _) = read_all(res.into_body()).await;
            assert_eq!(&data[..], b"ok");
            assert!(
                checkout(8).is_none(),
                "stray bytes after the body: not pooled"
            );
            let tcp = tokio::net::TcpStream::connect(bad).await.unwrap();
            let conn = Conn::new(Transport::Tcp(tcp), 8 << 10);
            let failed = exchange(conn, get("/b"), 9, false).await.err().unwrap();
            assert!(
                failed
                    .error
                    .error
                    .to_string()
                    .contains("invalid Content-Length"),
                "{}",
                failed.error.error
            );
        });
        drop((first, bad_server));
    }

    #[test]
    fn a_request_body_is_framed_by_what_is_known_of_it() {
        let mut out = Out::default();
        let mut req = get("/up");
        *req.method_mut() = http::Method::POST;
        *req.body_mut() = ProxyBody::Full(Some(Bytes::from_static(b"abc")));
        encode_request(&mut out, &mut req).ok().unwrap();
        let head = String::from_utf8_lossy(&out.buf).into_owned();
        assert_eq!(
            head,
            "POST /up HTTP/1.1\r\nhost: up.test\r\ncontent-length: 3\r\n\r\n"
        );
        assert_eq!(&out.data[..], b"abc");
        assert!(
            matches!(req.body(), ProxyBody::Full(Some(_))),
            "kept for a retry"
        );

        let (_tx, rx) = tokio::sync::mpsc::channel(1);
        let mut out = Out::default();
        let mut req = get("/up");
        *req.method_mut() = http::Method::PUT;
        *req.body_mut() = ProxyBody::Stream {
            rx,
            len: None,
            trailers: None,
        };
        encode_request(&mut out, &mut req).ok().unwrap();
        let head = String::from_utf8_lossy(&out.buf).into_owned();
        assert!(head.contains("transfer-encoding: chunked\r\n"), "{head}");
        assert!(out.body.as_ref().is_some_and(|o| o.chunked));
    }

    #[test]
    fn idle_connections_closed_by_the_server_or_expired_are_swept() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        actix_web::rt::System::new().block_on(async move {
            let connect = || async {
                let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
                let peer = listener.accept().unwrap().0;
                (Conn::new(Transport::Tcp(tcp), 8 << 10), peer)
            };
            let mut pool = Pool::default();
            let (a, _a_peer) = connect().await;
            let (b, b_peer) = connect().await;
            let (c, _c_peer) = connect().await;
            pool.put(1, a);
            pool.put(2, b);
            pool.put(3, c);
            // Server 2 closes its connection; the reactor sees it become readable.
            drop(b_peer);
            tokio::time::sleep(Duration::from_millis(50)).await;
            // Server 3's connection was last used before the idle timeout.
            for (since, _) in pool.idle.get_mut(&3).unwrap().iter_mut() {
                *since -= POOL_IDLE_TIMEOUT;
            }
            pool.sweep(Instant::now());
            let left: Vec<u64> = pool.idle.keys().copied().collect();
            assert_eq!(left, [1], "only the live, recent connection stays");
            assert!(pool.checkout(1).is_some());
            // A put sweeps once POOL_SWEEP_EVERY has passed since the last sweep.
            let (d, _d_peer) = connect().await;
            let (e, _e_peer) = connect().await;
            pool.put(1, e);
            for (since, _) in pool.idle.get_mut(&1).unwrap().iter_mut() {
                *since -= POOL_IDLE_TIMEOUT;
            }
            pool.swept = pool.swept.map(|t| t - POOL_SWEEP_EVERY);
            pool.put(4, d);
            let left: Vec<u64> = pool.idle.keys().copied().collect();
            assert_eq!(left, [4]);
        });
    }
}
