//! Fresh PostgreSQL databases on the test server (or any server URL), and a
//! private PostgreSQL server for tests that stop PostgreSQL.
//!
//! Invariant: each [`Database`] has a fresh random name and is dropped
//! (`WITH (FORCE)`) with its handle unless its owner asked to keep it; a
//! [`PgServer`] is stopped on drop.

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
    keep: bool,
}

impl Database {
    pub async fn create() -> anyhow::Result<Database> {
        Self::create_on(&pg_base())
            .await
            .context("creating a database on the test PostgreSQL (SWITCHYARD_TEST_PG)")
    }

    pub async fn create_on(base: &str) -> anyhow::Result<Database> {
        Self::create_as(base, unique("sy_test")).await
    }

    /// Creates database `name` (which must be fresh) on the server at
    /// `base` (`postgres://user@host:port`).
    pub async fn create_as(base: &str, name: String) -> anyhow::Result<Database> {
        let base = base.to_owned();
        let (client, conn) =
            tokio_postgres::connect(&format!("{base}/postgres"), tokio_postgres::NoTls)
                .await
                .with_context(|| format!("connecting to PostgreSQL at {base}"))?;
        tokio::spawn(conn);
        client
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .with_context(|| format!("creating database {name}"))?;
        Ok(Database {
            url: format!("{base}/{name}"),
            name,
            base,
            keep: false,
        })
    }

    /// Keeps the database after the handle drops (to inspect a run), or not.
    pub fn set_keep(&mut self, keep: bool) {
        self.keep = keep;
    }

    /// Hands the database to something that outlives this handle (a
    /// broker's storage): it is neither dropped nor reported; returns its URL.
    pub fn hand_over(self) -> String {
        let this = std::mem::ManuallyDrop::new(self);
        this.url.clone()
    }

    pub async fn client(&self) -> anyhow::Result<tokio_postgres::Client> {
        let (client, conn) = tokio_postgres::connect(&self.url, tokio_postgres::NoTls).await?;
        tokio::spawn(conn);
        Ok(client)
    }

    /// Pids of the PostgreSQL backends serving this database.
    pub async fn backend_pids(&self, client: &tokio_postgres::Client) -> Vec<u32> {
        client
            .query(
                "SELECT pid FROM pg_stat_activity WHERE datname = $1",
                &[&self.name],
            )
            .await
            .map(|rows| rows.iter().map(|r| r.get::<_, i32>(0) as u32).collect())
            .unwrap_or_default()
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        if self.keep {
            eprintln!("keeping database {}", self.url);
            return;
        }
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

    /// Turns TLS on with this certificate chain and key (PEM files), and
    /// restarts the server.
    pub fn enable_tls(&self, cert: &Path, key: &Path) -> anyhow::Result<()> {
        std::fs::copy(cert, self.data.join("server.crt"))?;
        std::fs::copy(key, self.data.join("server.key"))?;
        let mut conf = std::fs::read_to_string(self.data.join("postgresql.conf"))?;
        conf.push_str("\nssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n");
        std::fs::write(self.data.join("postgresql.conf"), conf)?;
        for (args, what) in [(vec!["postgres:postgres"], "chown"), (vec!["600"], "chmod")] {
            let ok = Command::new(what)
                .args(&args)
                .arg(self.data.join("server.key"))
                .arg(self.data.join("server.crt"))
                .status()?;
            if !ok.success() {
                bail!("{what} of the TLS files failed");
            }
        }
        self.stop();
        self.resume()
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

    /// The postmaster's pid (from `postmaster.pid`), while it runs.
    pub fn pid(&self) -> Option<u32> {
        std::fs::read_to_string(self.data.join("postmaster.pid"))
            .ok()?
            .lines()
            .next()?
            .trim()
            .parse()
            .ok()
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
