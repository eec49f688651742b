//! Numbered migrations from the workspace's `migrations/` directory, embedded
//! at compile time and applied at start-up by either binary.
//!
//! Invariant: migrations run under a session-level advisory lock, each in its
//! own transaction, and a version is recorded in the same transaction that
//! applies it, so several processes starting at once apply each exactly once.

use tokio_postgres::Client;

/// `(version, name, sql)` in order.
pub const MIGRATIONS: &[(i32, &str, &str)] = &[(
    1,
    "cursor_log",
    include_str!("../../migrations/0001_cursor_log.sql"),
)];

/// Arbitrary constant naming Switchyard's migration lock.
const LOCK_KEY: i64 = 0x5357_5943_4844_0001;

/// Applies pending migrations. Returns how many were applied.
pub async fn run(client: &mut Client) -> Result<usize, tokio_postgres::Error> {
    // Everything, including creating the bookkeeping table, happens under
    // the lock: concurrent `CREATE TABLE IF NOT EXISTS` can still collide in
    // the catalog.
    client
        .execute("SELECT pg_advisory_lock($1)", &[&LOCK_KEY])
        .await?;
    let result = async {
        client
            .batch_execute(
                "CREATE TABLE IF NOT EXISTS switchyard_migrations (
                     version INT PRIMARY KEY,
                     name TEXT NOT NULL,
                     applied_at TIMESTAMPTZ NOT NULL DEFAULT now())",
            )
            .await?;
        apply_pending(client).await
    }
    .await;
    let unlock = client
        .execute("SELECT pg_advisory_unlock($1)", &[&LOCK_KEY])
        .await;
    let applied = result?;
    unlock?;
    Ok(applied)
}

async fn apply_pending(client: &mut Client) -> Result<usize, tokio_postgres::Error> {
    let mut applied = 0;
    for (version, name, sql) in MIGRATIONS {
        let tx = client.transaction().await?;
        let done = tx
            .query_opt(
                "SELECT 1 FROM switchyard_migrations WHERE version = $1",
                &[version],
            )
            .await?
            .is_some();
        if done {
            tx.rollback().await?;
            continue;
        }
        tx.batch_execute(sql).await?;
        tx.execute(
            "INSERT INTO switchyard_migrations (version, name) VALUES ($1, $2)",
            &[version, name],
        )
        .await?;
        tx.commit().await?;
        tracing::info!(version, name, "migration applied");
        applied += 1;
    }
    Ok(applied)
}
