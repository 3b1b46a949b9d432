//! The read model shared by experience-api replicas through Redis.
//!
//! Each replica keeps its own [`ReadModel`](crate::read_model::ReadModel)
//! in memory. With Redis configured, a sku one replica loaded from
//! process-api is also written to Redis, and every replica applies the
//! change feed it follows to the skus held there: a replica missing a sku
//! takes it from Redis (one round trip to Redis instead of one to
//! process-api, which also spares process-api the load of every replica
//! warming up on its own).
//!
//! # What keeps the shared copy exact
//!
//! Redis holds, under `{key_prefix}rm:`:
//! - `epoch`: the current generation of entries; entries live under
//!   `{epoch}:{sku}`;
//! - `head`: the feed seq G up to which every change has been applied to
//!   every entry of the epoch that tracks the feed;
//! - per sku a hash: `m:s` (the seq S its snapshot was complete up to when
//!   it was written), `m:t` (1 when it tracks the feed), and per location
//!   `l:{location}` = `{seq}:{available}` (the seq of the value).
//!
//! A replica's writer applies the changes of its relay's buffer in seq
//! order, in batches (`prev`, `last`], each batch one Lua script, atomic:
//! - if `prev` > G (or no G yet), nobody applied the changes between G and
//!   `prev`: the entries can no longer be trusted, so the script opens a new
//!   epoch (the old entries expire unread) with G = `last`;
//! - else it applies every change of the batch newer than G to the entries
//!   that exist, each location only if the change's seq is above the
//!   value's, and raises G to `last`. Several replicas apply the same
//!   changes; the seq comparisons make the repeats harmless.
//!
//! An entry is written (replacing any) from a snapshot complete up to seq
//! R. If R ≥ G, every later change is above G and will be applied to it:
//! it tracks the feed and is complete up to max(S, G). If R < G, changes in
//! (R, G] were applied before it existed: it is complete up to S only (and
//! never replaces a tracking entry).
//!
//! A reader takes an entry with G (one script, atomic), then applies its
//! own relay's buffered changes of the sku after the entry's completeness
//! point, exactly as after a load from process-api. If its buffer does not
//! reach back that far, the entry is not used: the read goes to
//! process-api. So an answer from a shared entry is as fresh as the
//! replica's own feed, whatever the entry's age.
//!
//! Redis unreachable or slow (over 50 ms) means reads go to process-api as
//! without Redis; a writer that could not apply its changes before its
//! buffer moved past them opens a new epoch when Redis is back.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::watch;

use crate::process_client::{LocationAvailability, SkuAvailability};
use crate::read_model::Snapshot;
use crate::relay::{FeedChange, Relay};

/// Changes applied to Redis per script call.
const BATCH: usize = 1_000;

/// How long a read may wait for Redis before asking process-api instead.
const READ_BUDGET: Duration = Duration::from_millis(50);

/// KEYS[1]: epoch, KEYS[2]: head. ARGV[1]: entry prefix, ARGV[2]: prev,
/// ARGV[3]: last, then (sku, location, seq, available) per change.
/// Returns {epoch, 1 if a new epoch was opened}.
const APPLY: &str = r#"
local prefix = ARGV[1]
local prev = tonumber(ARGV[2])
local last = tonumber(ARGV[3])
local g = tonumber(redis.call('GET', KEYS[2]) or '-1')
local epoch = tonumber(redis.call('GET', KEYS[1]) or '0')
if g < 0 or prev > g then
  epoch = epoch + 1
  redis.call('SET', KEYS[1], epoch)
  redis.call('SET', KEYS[2], last)
  return {epoch, 1}
end
if last <= g then return {epoch, 0} end
for i = 4, #ARGV, 4 do
  local seq = tonumber(ARGV[i + 2])
  if seq > g then
    local key = prefix .. epoch .. ':' .. ARGV[i]
    if redis.call('EXISTS', key) == 1 then
      local field = 'l:' .. ARGV[i + 1]
      local cur = redis.call('HGET', key, field)
      if (not cur) or tonumber(string.match(cur, '^(-?%d+):')) < seq then
        redis.call('HSET', key, field, ARGV[i + 2] .. ':' .. ARGV[i + 3])
      end
    end
  end
end
redis.call('SET', KEYS[2], last)
return {epoch, 0}
"#;

/// KEYS[1]: epoch, KEYS[2]: head. ARGV[1]: entry prefix, ARGV[2]: sku,
/// ARGV[3]: R, ARGV[4]: time to live (ms), then (location, available).
/// Returns 1 if written.
const SHARE: &str = r#"
local epoch = redis.call('GET', KEYS[1])
if not epoch then return 0 end
local g = tonumber(redis.call('GET', KEYS[2]) or '-1')
local r = tonumber(ARGV[3])
local key = ARGV[1] .. epoch .. ':' .. ARGV[2]
local tracking = r >= g
if (not tracking) and redis.call('HGET', key, 'm:t') == '1' then return 0 end
redis.call('DEL', key)
redis.call('HSET', key, 'm:s', ARGV[3], 'm:t', tracking and '1' or '0')
local fields = {}
for i = 5, #ARGV, 2 do
  fields[#fields + 1] = 'l:' .. ARGV[i]
  fields[#fields + 1] = ARGV[3] .. ':' .. ARGV[i + 1]
  if #fields >= 500 then
    redis.call('HSET', key, unpack(fields))
    fields = {}
  end
end
if #fields > 0 then redis.call('HSET', key, unpack(fields)) end
redis.call('PEXPIRE', key, ARGV[4])
return 1
"#;

/// KEYS[1]: epoch, KEYS[2]: head. ARGV[1]: entry prefix, then skus.
/// Returns {{G}, HGETALL of each sku (empty when absent)}.
const READ: &str = r#"
local epoch = redis.call('GET', KEYS[1])
local out = {{redis.call('GET', KEYS[2]) or '-1'}}
for i = 2, #ARGV do
  if epoch then
    out[i] = redis.call('HGETALL', ARGV[1] .. epoch .. ':' .. ARGV[i])
  else
    out[i] = {}
  end
end
return out
"#;

/// The shared copy, as one replica sees it.
pub struct SharedModel {
    connection: std::sync::RwLock<Option<redis::aio::ConnectionManager>>,
    epoch_key: String,
    head_key: String,
    entries: String,
    ttl_ms: u64,
    apply: redis::Script,
    share: redis::Script,
    read: redis::Script,
    /// The writer's position in the feed (-1: none yet).
    cursor: AtomicI64,
    /// Epochs this replica opened.
    epochs_opened: AtomicU64,
}

impl std::fmt::Debug for SharedModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedModel")
            .field("entries", &self.entries)
            .field("connected", &self.connected())
            .finish_non_exhaustive()
    }
}

/// A sku as the shared copy holds it.
#[derive(Debug, Clone)]
pub struct SharedSku {
    /// Complete up to this feed seq.
    pub after: i64,
    /// Its availability (`known`: always).
    pub availability: SkuAvailability,
}

/// What an operator sees of the shared copy.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct SharedStatus {
    /// Redis answers.
    pub connected: bool,
    /// The feed seq this replica has applied to Redis up to (-1: none).
    pub writer_seq: i64,
    /// Epochs this replica opened (after a gap in what reached Redis).
    pub epochs_opened: u64,
}

impl SharedModel {
    /// Starts connecting to `url` in the background (call within a Tokio
    /// runtime). Keys go under `{key_prefix}rm:`; entries live `ttl` after
    /// they are written.
    pub fn start(url: &str, key_prefix: &str, ttl: Duration) -> Arc<Self> {
        let shared = Arc::new(Self::new(key_prefix, ttl));
        retail_shared::redis_link::connect_in_background(
            &shared,
            url,
            "the read model",
            |shared, connection| {
                if let Ok(mut slot) = shared.connection.write() {
                    *slot = Some(connection);
                }
            },
        );
        shared
    }

    fn new(key_prefix: &str, ttl: Duration) -> Self {
        let base = format!("{key_prefix}rm:");
        Self {
            connection: std::sync::RwLock::new(None),
            epoch_key: format!("{base}epoch"),
            head_key: format!("{base}head"),
            entries: base,
            ttl_ms: u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1),
            apply: redis::Script::new(APPLY),
            share: redis::Script::new(SHARE),
            read: redis::Script::new(READ),
            cursor: AtomicI64::new(-1),
            epochs_opened: AtomicU64::new(0),
        }
    }

    fn connection(&self) -> Option<redis::aio::ConnectionManager> {
        self.connection.read().ok().and_then(|slot| slot.clone())
    }

    /// Whether Redis is connected.
    pub fn connected(&self) -> bool {
        self.connection().is_some()
    }

    /// For operators.
    pub fn status(&self) -> SharedStatus {
        SharedStatus {
            connected: self.connected(),
            writer_seq: self.cursor.load(Ordering::Relaxed),
            epochs_opened: self.epochs_opened.load(Ordering::Relaxed),
        }
    }

    /// The skus the shared copy holds, in order (`None` per sku it lacks);
    /// `None` altogether when Redis is not connected or too slow.
    pub async fn get(&self, skus: &[String]) -> Option<Vec<Option<SharedSku>>> {
        let mut connection = self.connection()?;
        let mut invocation = self.read.key(&self.epoch_key);
        invocation.key(&self.head_key).arg(&self.entries);
        for sku in skus {
            invocation.arg(sku);
        }
        let answer: Vec<Vec<String>> =
            match tokio::time::timeout(READ_BUDGET, invocation.invoke_async(&mut connection)).await
            {
                Ok(Ok(answer)) => answer,
                Ok(Err(error)) => {
                    tracing::debug!(%error, "the shared read model did not answer");
                    return None;
                }
                Err(_) => return None,
            };
        let head: i64 = answer.first()?.first()?.parse().ok()?;
        Some(
            skus.iter()
                .enumerate()
                .map(|(index, sku)| {
                    answer
                        .get(index + 1)
                        .and_then(|fields| parse_entry(sku, head, fields))
                })
                .collect(),
        )
    }

    /// Writes `snapshot` of `sku`, complete up to feed seq `through`, in
    /// the background.
    pub fn put(self: &Arc<Self>, sku: &str, through: i64, snapshot: &Snapshot) {
        if !self.connected() {
            return;
        }
        let shared = self.clone();
        let sku = sku.to_owned();
        let snapshot = snapshot.clone();
        tokio::spawn(async move {
            if let Err(error) = shared.write(&sku, through, &snapshot).await {
                tracing::debug!(%error, "a sku was not shared");
            }
        });
    }

    /// Writes `snapshot` of `sku`, complete up to feed seq `through`;
    /// whether it was written (not when a better entry is there).
    async fn write(&self, sku: &str, through: i64, snapshot: &Snapshot) -> anyhow::Result<bool> {
        let mut connection = self
            .connection()
            .ok_or_else(|| anyhow::anyhow!("Redis is not connected"))?;
        let mut invocation = self.share.key(&self.epoch_key);
        invocation
            .key(&self.head_key)
            .arg(&self.entries)
            .arg(sku)
            .arg(through)
            .arg(self.ttl_ms);
        for (location, available) in &snapshot.locations {
            invocation.arg(location).arg(available);
        }
        let written: i64 = invocation.invoke_async(&mut connection).await?;
        Ok(written == 1)
    }

    /// Applies changes (`prev`, `last`] (the feed's, in seq order).
    async fn apply(&self, prev: i64, last: i64, changes: &[Arc<FeedChange>]) -> anyhow::Result<()> {
        let mut connection = self
            .connection()
            .ok_or_else(|| anyhow::anyhow!("Redis is not connected"))?;
        let mut invocation = self.apply.key(&self.epoch_key);
        invocation
            .key(&self.head_key)
            .arg(&self.entries)
            .arg(prev)
            .arg(last);
        for change in changes {
            invocation
                .arg(&change.sku)
                .arg(&change.location_id)
                .arg(change.seq)
                .arg(change.available);
        }
        let (epoch, opened): (i64, i64) = invocation.invoke_async(&mut connection).await?;
        if opened == 1 {
            self.epochs_opened.fetch_add(1, Ordering::Relaxed);
            metrics::counter!("read_model_shared_epochs_total").increment(1);
            tracing::info!(
                epoch,
                after = prev,
                "the shared read model starts a new epoch (changes before this replica's feed position never reached it)"
            );
        }
        Ok(())
    }
}

/// A Redis hash of a sku as what the reader needs.
fn parse_entry(sku: &str, head: i64, fields: &[String]) -> Option<SharedSku> {
    if fields.is_empty() {
        return None;
    }
    let mut since = None;
    let mut tracking = false;
    let mut locations = Vec::new();
    for pair in fields.chunks_exact(2) {
        let (field, value) = (&pair[0], &pair[1]);
        match field.as_str() {
            "m:s" => since = value.parse::<i64>().ok(),
            "m:t" => tracking = value == "1",
            _ => {
                let location = field.strip_prefix("l:")?;
                let (_, available) = value.split_once(':')?;
                locations.push(LocationAvailability {
                    location_id: location.to_owned(),
                    available: available.parse().ok()?,
                });
            }
        }
    }
    let since = since?;
    locations.sort_by(|a, b| a.location_id.cmp(&b.location_id));
    Some(SharedSku {
        after: if tracking { since.max(head) } else { since },
        availability: SkuAvailability {
            sku: sku.to_owned(),
            known: true,
            total_available: locations.iter().map(|l| l.available).sum(),
            locations,
        },
    })
}

/// Applies the relay's changes to the shared copy until `stop`.
pub async fn follow(shared: Arc<SharedModel>, relay: Arc<Relay>, mut stop: watch::Receiver<bool>) {
    let mut heads = relay.subscribe();
    // Where this replica's contiguous run of changes applied to Redis
    // stands (`None`: start at the relay's oldest buffered point).
    let mut cursor: Option<i64> = None;
    let mut delay = Duration::from_millis(100);
    loop {
        if *stop.borrow() {
            return;
        }
        let next = if shared.connected() && relay.following() {
            let from = cursor.unwrap_or_else(|| relay.covered_from());
            match relay.read_after(from, BATCH, |_| true) {
                None => {
                    // The buffer moved past what reached Redis.
                    cursor = None;
                    continue;
                }
                Some((changes, _)) if changes.is_empty() => {
                    cursor = Some(from);
                    None
                }
                Some((changes, scanned)) => Some((from, scanned, changes)),
            }
        } else {
            None
        };
        match next {
            Some((from, scanned, changes)) => match shared.apply(from, scanned, &changes).await {
                Ok(()) => {
                    cursor = Some(scanned);
                    shared.cursor.store(scanned, Ordering::Relaxed);
                    delay = Duration::from_millis(100);
                }
                Err(error) => {
                    tracing::warn!(%error, "changes not applied to the shared read model; retrying");
                    tokio::select! {
                        _ = stop.wait_for(|s| *s) => return,
                        () = tokio::time::sleep(delay) => {}
                    }
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            },
            None => {
                tokio::select! {
                    _ = stop.wait_for(|s| *s) => return,
                    _ = heads.changed() => {}
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::read_model::ReadModel;

    fn change(seq: i64, sku: &str, location: &str, available: i64) -> FeedChange {
        FeedChange {
            seq,
            location_id: location.into(),
            sku: sku.into(),
            available,
            on_hand: available,
            reserved: 0,
            changed_at: String::new(),
            published_at: String::new(),
        }
    }

    fn availability(sku: &str, locations: &[(&str, i64)]) -> SkuAvailability {
        SkuAvailability {
            sku: sku.into(),
            known: true,
            total_available: locations.iter().map(|(_, a)| a).sum(),
            locations: locations
                .iter()
                .map(|(l, a)| LocationAvailability {
                    location_id: (*l).into(),
                    available: *a,
                })
                .collect(),
        }
    }

    fn pairs(locations: &[(&str, i64)]) -> Vec<(String, i64)> {
        locations
            .iter()
            .map(|(l, a)| ((*l).to_owned(), *a))
            .collect()
    }

    async fn connect(url: &str, prefix: &str) -> Arc<SharedModel> {
        let shared = SharedModel::new(prefix, Duration::from_secs(60));
        let client = redis::Client::open(url).expect("url");
        let connection = redis::aio::ConnectionManager::new(client)
            .await
            .expect("redis");
        *shared.connection.write().expect("lock") = Some(connection);
        Arc::new(shared)
    }

    /// A replica: its relay (following from `from`) and model.
    fn replica(from: i64) -> (Arc<Relay>, Arc<ReadModel>) {
        let model = ReadModel::new(100);
        let relay = Relay::with_model(1_000, Some(model.clone()));
        relay.start_for_test(from);
        (relay, model)
    }

    fn arcs(changes: &[FeedChange]) -> Vec<Arc<FeedChange>> {
        changes.iter().cloned().map(Arc::new).collect()
    }

    #[tokio::test]
    async fn with_redis_replicas_share_skus_and_stay_exact() {
        let Ok(url) = std::env::var("TEST_REDIS_URL") else {
            use std::io::Write;
            let _ = writeln!(
                std::io::stderr(),
                "note: Redis tests skip: TEST_REDIS_URL is not set"
            );
            return;
        };
        let prefix = format!("test-{}:", uuid::Uuid::new_v4());
        let first = connect(&url, &prefix).await;
        let second = connect(&url, &prefix).await;
        let (relay_a, model_a) = replica(0);
        let (relay_b, model_b) = replica(0);
        let opening = [
            change(1, "A", "S1", 5),
            change(2, "A", "S2", 3),
            change(3, "B", "S1", 1),
        ];
        for c in &opening {
            relay_a.push_for_test(c.clone());
            relay_b.push_for_test(c.clone());
        }
        // Nothing was ever applied: the first batch opens an epoch.
        first.apply(0, 3, &arcs(&opening)).await.expect("apply");
        assert_eq!(first.status().epochs_opened, 1);

        // Replica A loads sku A (complete up to 3) and shares it.
        let inserted = model_a.insert(&relay_a, 3, &availability("A", &[("S1", 5), ("S2", 3)]));
        assert_eq!(inserted.through, Some(3));
        assert!(
            first
                .write("A", 3, &inserted.snapshot)
                .await
                .expect("write")
        );

        // Two more changes; replica B's writer applies them.
        let more = [change(4, "A", "S1", 4), change(5, "A", "S3", 7)];
        for c in &more {
            relay_a.push_for_test(c.clone());
            relay_b.push_for_test(c.clone());
        }
        second.apply(3, 5, &arcs(&more)).await.expect("apply");
        // Replica A's writer, behind, applies them again: nothing changes.
        first.apply(3, 5, &arcs(&more)).await.expect("apply");

        // Replica B takes sku A from Redis: tracking, complete up to 5.
        let found = second.get(&["A".into(), "C".into()]).await.expect("answer");
        let entry = found[0].clone().expect("shared");
        assert!(found[1].is_none());
        assert_eq!(entry.after, 5);
        let snapshot = model_b
            .insert_shared(&relay_b, entry.after, &entry.availability)
            .expect("caught up");
        let want = pairs(&[("S1", 4), ("S2", 3), ("S3", 7)]);
        assert_eq!(snapshot.locations, want);
        assert_eq!(model_b.get("A").expect("held").locations, want);

        // A replica whose feed is ahead of Redis catches the entry up with
        // its own buffer.
        let (relay_c, model_c) = replica(0);
        for c in opening.iter().chain(&more) {
            relay_c.push_for_test(c.clone());
        }
        relay_c.push_for_test(change(6, "A", "S2", 0));
        let entry = second.get(&["A".into()]).await.expect("answer")[0]
            .clone()
            .expect("shared");
        let snapshot = model_c
            .insert_shared(&relay_c, entry.after, &entry.availability)
            .expect("caught up");
        assert_eq!(
            snapshot.locations,
            pairs(&[("S1", 4), ("S2", 0), ("S3", 7)])
        );

        // A snapshot older than what Redis applied does not track the feed
        // (changes 4 and 5 were applied before it existed), and never
        // replaces a tracking entry.
        let old = Snapshot {
            locations: pairs(&[("S1", 1)]),
        };
        assert!(!second.write("A", 3, &old).await.expect("write"));
        assert!(second.write("B", 3, &old).await.expect("write"));
        let entry = first.get(&["B".into()]).await.expect("answer")[0]
            .clone()
            .expect("shared");
        assert_eq!(entry.after, 3, "complete up to its own snapshot only");
        // A replica whose buffer does not reach back to 3 cannot use it.
        let (relay_d, model_d) = replica(4);
        relay_d.push_for_test(change(5, "A", "S3", 7));
        assert!(
            model_d
                .insert_shared(&relay_d, entry.after, &entry.availability)
                .is_none()
        );
        assert!(model_d.get("B").is_none());

        // Changes 6..9 never reached Redis (no writer ran): a writer
        // resuming after them opens a new epoch, and the stale entries are
        // gone.
        second
            .apply(9, 10, &arcs(&[change(10, "A", "S1", 2)]))
            .await
            .expect("apply");
        assert_eq!(second.status().epochs_opened, 1);
        let found = first.get(&["A".into(), "B".into()]).await.expect("answer");
        assert!(found.iter().all(Option::is_none), "{found:?}");
    }

    #[test]
    fn entries_parse_with_their_completeness_point() {
        let fields: Vec<String> = ["m:s", "7", "m:t", "1", "l:S2", "9:4", "l:S1", "7:-1"]
            .map(str::to_owned)
            .to_vec();
        let tracking = parse_entry("A", 12, &fields).expect("entry");
        assert_eq!(tracking.after, 12);
        assert_eq!(tracking.availability.total_available, 3);
        assert_eq!(tracking.availability.locations[0].location_id, "S1");
        let mut fields = fields;
        fields[3] = "0".into();
        assert_eq!(parse_entry("A", 12, &fields).expect("entry").after, 7);
        assert!(parse_entry("A", 12, &[]).is_none());
    }
}
