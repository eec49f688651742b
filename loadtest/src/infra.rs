//! The run's own namespace on the shared servers: a random suffix for its
//! names, and a Redis key/channel prefix of its own on the machine's Redis.
//! The broker and the fresh database `sy_load_<random>` are testkit's
//! ([`switchyard_testkit::Broker`], [`switchyard_testkit::Database`]).
//!
//! Invariant: nothing a run creates outlives it unless `--keep` is given:
//! the prefix's keys are deleted at the end (and the database dropped), so
//! runs never see each other's data.

/// A short random suffix for names.
pub fn suffix() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..10].to_owned()
}

/// The run's own namespace on the machine's Redis.
#[derive(Debug, Clone)]
pub struct RedisNs {
    pub url: String,
    pub prefix: String,
}

impl RedisNs {
    pub fn new(url: &str) -> Self {
        RedisNs {
            url: url.to_owned(),
            prefix: format!("sy_load_{}", suffix()),
        }
    }

    async fn conn(&self) -> anyhow::Result<redis::aio::MultiplexedConnection> {
        let client = redis::Client::open(self.url.as_str())?;
        Ok(client.get_multiplexed_async_connection().await?)
    }

    /// The redis-server's pid (from `INFO server`), to charge its CPU.
    pub async fn server_pid(&self) -> Option<u32> {
        let mut c = self.conn().await.ok()?;
        let info: String = redis::cmd("INFO")
            .arg("server")
            .query_async(&mut c)
            .await
            .ok()?;
        info.lines()
            .find_map(|l| l.strip_prefix("process_id:"))
            .and_then(|v| v.trim().parse().ok())
    }

    /// Deletes every key under the prefix.
    pub async fn cleanup(&self) -> anyhow::Result<u64> {
        let mut c = self.conn().await?;
        let mut cursor: u64 = 0;
        let mut deleted = 0;
        loop {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(format!("{}*", self.prefix))
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut c)
                .await?;
            if !keys.is_empty() {
                let n: u64 = redis::cmd("DEL").arg(&keys).query_async(&mut c).await?;
                deleted += n;
            }
            if next == 0 {
                return Ok(deleted);
            }
            cursor = next;
        }
    }
}
