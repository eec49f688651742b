//! The fleet worker process as the generator sees it: a worker that is
//! killed mid-run makes the next call fail (with what it knows), promptly,
//! instead of hanging the run. Needs no broker.

use std::net::Ipv4Addr;
use std::path::Path;
use std::time::{Duration, Instant};
use switchyard_loadtest::client::{ClientSpec, FleetOptions, Protocol};
use switchyard_loadtest::fleet::Query;
use switchyard_loadtest::worker::{Command, Worker};

fn clients(n: usize, server: std::net::SocketAddr) -> Vec<(ClientSpec, Vec<u32>)> {
    (0..n)
        .map(|_| {
            (
                ClientSpec {
                    protocol: Protocol::RawTcp,
                    server,
                    source_ip: Ipv4Addr::LOCALHOST,
                    token: String::new(),
                    topic: switchyard_loadtest::event::FANOUT_TOPIC,
                    products: Vec::new(),
                    alternates: Vec::new(),
                    churn_ms: None,
                },
                vec![0],
            )
        })
        .collect()
}

fn opts() -> FleetOptions {
    FleetOptions {
        connect_concurrency: 8,
        connect_timeout: Duration::from_secs(2),
        max_attempts: 3,
        shards: 2,
    }
}

#[tokio::test]
async fn a_worker_reports_its_connections_and_a_killed_one_fails_the_call() {
    // A raw fan-out stand-in: accept, say hello, keep the socket.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let server = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((mut s, _)) = listener.accept().await {
            use tokio::io::AsyncWriteExt as _;
            let _ = s.write_all(&[0, 0, 0, 0]).await;
            held.push(s);
        }
    });
    let exe = Path::new(env!("CARGO_BIN_EXE_switchyard-loadtest"));
    let w = Worker::spawn(exe, 0, clients(5, server), opts(), Duration::from_secs(10))
        .await
        .expect("worker starts");
    let q = Command::Query(Query {
        produced: Some(vec![0]),
        ..Query::default()
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = w.status(&q, Duration::from_secs(5)).await.expect("status");
        if s.live == 5 {
            assert_eq!(s.tally.expect("tally").lost, 0);
            break;
        }
        assert!(Instant::now() < deadline, "only {} live", s.live);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let pid = w.pid().await.expect("running");
    let killed = std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .expect("kill runs");
    assert!(killed.success());
    let t = Instant::now();
    let err = w
        .status(&q, Duration::from_secs(5))
        .await
        .expect_err("a dead worker cannot answer");
    assert!(t.elapsed() < Duration::from_secs(8), "{:?}", t.elapsed());
    let msg = format!("{err:#}");
    assert!(msg.contains("fleet worker 0"), "{msg}");
    assert!(msg.contains("signal: 9"), "{msg}");
    // And it stays failed.
    assert!(w.status(&q, Duration::from_secs(5)).await.is_err());
}
