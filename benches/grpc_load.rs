//! A gRPC unary load tool for benches/load/grpc.sh (ghz is not packaged for Debian): one
//! binary, two roles.
//!
//! - `grpc_load server ADDR`: a unary echo service (`/bench.Echo/Unary`) over h2c, tonic's
//!   server side on hyper's HTTP/2, on a current-thread runtime (one core, like the proxies).
//! - `grpc_load client URL SECONDS CONCURRENCY CONNECTIONS`: CONCURRENCY callers spread over
//!   CONNECTIONS HTTP/2 connections (tonic channels, h2c) call it through URL for SECONDS, then
//!   print `calls/s`, the p50 and p99 latency in microseconds and the failed calls, tab-separated.
//!
//! No protoc: the message is a hand-written prost struct and the codec tonic-prost's.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tonic::codegen::http::uri::PathAndQuery;
use tonic_prost::ProstCodec;

#[derive(Clone, PartialEq, prost::Message)]
struct Msg {
    #[prost(string, tag = "1")]
    text: String,
    #[prost(uint64, tag = "2")]
    n: u64,
}

#[derive(Clone)]
struct Echo;

impl tonic::server::UnaryService<Msg> for Echo {
    type Response = Msg;
    type Future = std::future::Ready<Result<tonic::Response<Msg>, tonic::Status>>;

    fn call(&mut self, req: tonic::Request<Msg>) -> Self::Future {
        std::future::ready(Ok(tonic::Response::new(req.into_inner())))
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // `cargo bench` passes `--bench`: nothing to run then.
    match args.first().map(String::as_str) {
        Some("server") => server(&args[1..]),
        Some("client") => client(&args[1..]),
        _ => eprintln!("usage: grpc_load server ADDR | client URL SECONDS CONCURRENCY CONNECTIONS"),
    }
}

fn server(args: &[String]) {
    let addr: SocketAddr = args
        .first()
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| "127.0.0.1:50051".parse().expect("address"));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(addr).await.expect("bind");
        println!("listening on {addr}");
        loop {
            let Ok((sock, _)) = listener.accept().await else {
                continue;
            };
            let _ = sock.set_nodelay(true);
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(
                    |req: http::Request<hyper::body::Incoming>| async move {
                        let mut grpc = tonic::server::Grpc::new(ProstCodec::<Msg, Msg>::default());
                        Ok::<_, std::convert::Infallible>(grpc.unary(Echo, req).await)
                    },
                );
                let served =
                    hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                        .max_concurrent_streams(1024)
                        .serve_connection(hyper_util::rt::TokioIo::new(sock), svc)
                        .await;
                if let Err(e) = served {
                    eprintln!("connection ended: {e:?}");
                }
            });
        }
    });
}

fn client(args: &[String]) {
    let arg = |i: usize, name: &str| -> String {
        args.get(i)
            .cloned()
            .unwrap_or_else(|| panic!("missing {name}"))
    };
    let url = arg(0, "URL");
    let seconds: u64 = arg(1, "SECONDS").parse().expect("SECONDS");
    let concurrency: usize = arg(2, "CONCURRENCY").parse().expect("CONCURRENCY");
    let connections: usize = arg(3, "CONNECTIONS").parse().expect("CONNECTIONS");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let mut channels = Vec::new();
        for _ in 0..connections.max(1) {
            let ch = tonic::transport::Endpoint::from_shared(url.clone())
                .expect("URL")
                .tcp_nodelay(true)
                .connect()
                .await
                .expect("connect");
            channels.push(ch);
        }
        let stop = Arc::new(AtomicBool::new(false));
        let failed = Arc::new(AtomicU64::new(0));
        let mut tasks = Vec::new();
        for i in 0..concurrency {
            let ch = channels[i % channels.len()].clone();
            let (stop, failed) = (stop.clone(), failed.clone());
            tasks.push(tokio::spawn(async move {
                let mut c = tonic::client::Grpc::new(ch);
                let mut latencies = Vec::with_capacity(1 << 16);
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let started = Instant::now();
                    let ok = match c.ready().await {
                        Ok(()) => {
                            let res = c
                                .unary(
                                    tonic::Request::new(Msg {
                                        text: "ping".into(),
                                        n,
                                    }),
                                    PathAndQuery::from_static("/bench.Echo/Unary"),
                                    ProstCodec::<Msg, Msg>::default(),
                                )
                                .await;
                            match res {
                                Ok(r) => r.get_ref().n == n,
                                Err(status) => {
                                    if failed.load(Ordering::Relaxed) == 0 {
                                        eprintln!("first failed call: {status:?}");
                                    }
                                    false
                                }
                            }
                        }
                        Err(e) => {
                            if failed.load(Ordering::Relaxed) == 0 {
                                eprintln!("channel not ready: {e}");
                            }
                            false
                        }
                    };
                    if ok {
                        latencies.push(started.elapsed().as_micros() as u64);
                    } else {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                    n += 1;
                }
                latencies
            }));
        }
        let started = Instant::now();
        tokio::time::sleep(Duration::from_secs(seconds)).await;
        stop.store(true, Ordering::Relaxed);
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.unwrap_or_default());
        }
        let elapsed = started.elapsed().as_secs_f64();
        all.sort_unstable();
        let pct = |p: f64| {
            all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1)))
                .copied()
                .unwrap_or(0)
        };
        println!(
            "{:.0}\t{}\t{}\t{}",
            all.len() as f64 / elapsed,
            pct(0.5),
            pct(0.99),
            failed.load(Ordering::Relaxed)
        );
    });
}
