//! Fresh PostgreSQL databases on the test server (or any server URL), and a
//! private PostgreSQL server for tests that stop PostgreSQL.
//!
//! Invariant: each [`Database`] has a fresh random name and is dropped
//! (`WITH (FORCE)`) with its handle; a [`PgServer`] is stopped on drop.

use crate::probe::free_port;
use crate::unique;
use anyhow::{anyhow, bail, Context as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// PostgreSQL server for tests (`SWITCHYARD_TEST_PG`, default the machine's).
pub fn pg_base() -> String {
    std::env::var("SWITCHYARD_TEST_PG")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into())
}

/// A fresh PostgreSQL database, dropped with the handle.
#[derive(Debug)]
pub struct Database {
    pub name: String,
    pub url: String,
    base: String,
}

impl Database {
    pub async fn create() -> anyhow::Result<Database> {
        Self::create_on(&pg_base()).await
    }

    pub async fn create_on(base: &str) -> anyhow::Result<Database> {
        let name = unique("sy_test");
        let base = base.to_owned();
        let (client, conn) =
            tokio_postgres::connect(&format!("{base}/postgres"), tokio_postgres::NoTls)
                .await
                .context("connecting to the test PostgreSQL (SWITCHYARD_TEST_PG)")?;
        tokio::spawn(conn);
        client
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await?;
        Ok(Database {
            url: format!("{base}/{name}"),
            name,
            base,
        })
    }

    pub async fn client(&self) -> anyhow::Result<tokio_postgres::Client> {
        let (client, conn) = tokio_postgres::connect(&self.url, tokio_postgres::NoTls).await?;
        tokio::spawn(conn);
        Ok(client)
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        let base = &self.base;
        let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        let _ = Command::new("psql")
            .args([&format!("{base}/postgres"), "-q", "-c", &sql])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// A private PostgreSQL server (for tests that stop PostgreSQL), run as the
/// `postgres` system user in a scratch directory.
#[derive(Debug)]
pub struct PgServer {
    pub port: u16,
    data: PathBuf,
    bin: PathBuf,
}

impl PgServer {
    pub fn start(dir: &Path) -> anyhow::Result<PgServer> {
        let bin = std::fs::read_dir("/usr/lib/postgresql")?
            .filter_map(Result::ok)
            .map(|e| e.path().join("bin"))
            .filter(|p| p.join("initdb").exists())
            .max()
            .ok_or_else(|| anyhow!("no PostgreSQL server binaries under /usr/lib/postgresql"))?;
        let data = dir.join(unique("pgdata"));
        std::fs::create_dir_all(&data)?;
        let chown = Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(dir)
            .status()?;
        if !chown.success() {
            bail!("cannot chown {} to postgres", dir.display());
        }
        let ok = Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(bin.join("initdb"))
            .args(["--auth=trust", "-U", "postgres", "-D"])
            .arg(&data)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()?;
        if !ok.success() {
            bail!("initdb failed");
        }
        let pg = PgServer {
            port: free_port(),
            data,
            bin,
        };
        pg.resume()?;
        Ok(pg)
    }

    /// Starts (again) on the same port and data.
    pub fn resume(&self) -> anyhow::Result<()> {
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            self.port,
            self.data.display()
        );
        let ok = Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(self.bin.join("pg_ctl"))
            .args(["-w", "-t", "30", "-D"])
            .arg(&self.data)
            .args(["-o", &opts, "-l"])
            .arg(self.data.join("server.log"))
            .arg("start")
            .stdout(Stdio::null())
            .status()?;
        if !ok.success() {
            bail!("pg_ctl start failed");
        }
        Ok(())
    }

    /// Stops immediately (connections are cut).
    pub fn stop(&self) {
        let _ = Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(self.bin.join("pg_ctl"))
            .args(["-w", "-m", "immediate", "-D"])
            .arg(&self.data)
            .arg("stop")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }

    pub fn base_url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}", self.port)
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        self.stop();
    }
}
