//! `sslmode` in `SWITCHYARD_POSTGRES_URL` against real servers: private
//! PostgreSQL servers without TLS and with a certificate issued by a test
//! CA (made with `openssl`), so every mode's outcome is observed, not
//! assumed.

#![allow(clippy::unwrap_used)]

use switchyard_cursorlog::{CursorLog, PoolOptions};
use switchyard_testkit::{scratch_dir, test_certificates, PgServer};

async fn connect(url: &str) -> Result<CursorLog, String> {
    CursorLog::connect(url, PoolOptions::default())
        .await
        .map_err(|e| e.to_string())
}

/// Whether the pool's connection is encrypted (`pg_stat_ssl`).
async fn encrypted(log: &CursorLog) -> bool {
    let client = log.pool().get().await.unwrap();
    client
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sslmode_require_against_a_server_without_tls_fails_clearly() {
    let dir = scratch_dir("pg-notls");
    let pg = PgServer::start(&dir).unwrap();
    let base = format!("{}/postgres", pg.base_url());
    let e = connect(&format!("{base}?sslmode=require"))
        .await
        .expect_err("require connected without TLS");
    assert!(e.contains("TLS"), "{e}");
    let e = connect(&format!("{base}?sslmode=verify-full"))
        .await
        .expect_err("verify-full connected without TLS");
    assert!(e.contains("TLS"), "{e}");
    for mode in ["disable", "prefer"] {
        let log = connect(&format!("{base}?sslmode={mode}")).await.unwrap();
        assert!(!encrypted(&log).await, "{mode}");
    }
    let log = connect(&base).await.unwrap();
    assert!(!encrypted(&log).await);
    let e = connect(&format!("{base}?sslmode=verify-ca"))
        .await
        .err()
        .unwrap();
    assert!(e.contains("sslmode=verify-ca is not supported"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_to_postgresql_is_used_and_verify_full_checks_the_certificate() {
    let dir = scratch_dir("pg-tls");
    let certs = dir.join("certs");
    std::fs::create_dir_all(&certs).unwrap();
    let (ca, crt, key) = test_certificates(&certs, "DNS:localhost,IP:127.0.0.1");
    let pg = PgServer::start(&dir.join("server")).unwrap();
    pg.enable_tls(&crt, &key).unwrap();
    let base = format!("postgres://postgres@127.0.0.1:{}/postgres", pg.port);
    for mode in ["prefer", "require"] {
        let log = connect(&format!("{base}?sslmode={mode}")).await.unwrap();
        assert!(encrypted(&log).await, "{mode}");
    }
    let ca_arg = ca.display().to_string();
    let log = connect(&format!("{base}?sslmode=verify-full&sslrootcert={ca_arg}"))
        .await
        .unwrap();
    assert!(encrypted(&log).await);
    let localhost = format!(
        "postgres://postgres@localhost:{}/postgres?sslmode=verify-full&sslrootcert={ca_arg}",
        pg.port
    );
    assert!(encrypted(&connect(&localhost).await.unwrap()).await);
    // The system's roots do not know the test CA.
    let e = connect(&format!("{base}?sslmode=verify-full"))
        .await
        .expect_err("an unknown CA was trusted");
    assert!(
        e.contains("TLS") && e.to_lowercase().contains("certificate"),
        "{e}"
    );
    // Another CA's roots are refused too.
    let other = dir.join("other");
    std::fs::create_dir_all(&other).unwrap();
    let (other_ca, _, _) = test_certificates(&other, "DNS:localhost");
    let e = connect(&format!(
        "{base}?sslmode=verify-full&sslrootcert={}",
        other_ca.display()
    ))
    .await
    .expect_err("a certificate of another CA was trusted");
    assert!(e.contains("TLS"), "{e}");
    let log = connect(&format!("{base}?sslmode=disable")).await.unwrap();
    assert!(!encrypted(&log).await);
    drop(pg);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_full_checks_the_host_name() {
    let dir = scratch_dir("pg-tls-name");
    let certs = dir.join("certs");
    std::fs::create_dir_all(&certs).unwrap();
    let (ca, crt, key) = test_certificates(&certs, "DNS:db.example.internal");
    let pg = PgServer::start(&dir.join("server")).unwrap();
    pg.enable_tls(&crt, &key).unwrap();
    let url = format!(
        "postgres://postgres@127.0.0.1:{}/postgres?sslmode=verify-full&sslrootcert={}",
        pg.port,
        ca.display()
    );
    let e = connect(&url)
        .await
        .expect_err("a certificate for another name was accepted");
    assert!(e.contains("TLS"), "{e}");
    // require does not check names (libpq's meaning): it connects, encrypted.
    let url = format!(
        "postgres://postgres@127.0.0.1:{}/postgres?sslmode=require",
        pg.port
    );
    assert!(encrypted(&connect(&url).await.unwrap()).await);
}
