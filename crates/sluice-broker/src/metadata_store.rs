//! The cluster metadata of a single node: cluster id and topics with their partition
//! counts, ids and configuration overrides.
//!
//! Since the controller quorum (`sluice-controller`) this store only keeps the cluster id
//! (`meta.properties`) and is read once, on the first start with an empty quorum, to
//! import the topics, configs and producer id floor of older data directories
//! (`cluster::import_single_node_metadata`). The quorum's image is the source of truth.
//!
//! It is persisted as one JSON document, replaced atomically (temp file, fsync, rename,
//! fsync directory) on every change, so a crash leaves either the old or the new image.
//! Changes are made durable *before* partition directories are created or removed.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use uuid::Uuid;

const METADATA_DIR: &str = "__cluster_metadata";
const METADATA_FILE: &str = "metadata.json";
const META_PROPERTIES: &str = "meta.properties";
/// Producer ids reserved durably at a time: one metadata write per this many
/// InitProducerId calls, and at most this many ids skipped by a crash.
pub const PRODUCER_ID_BLOCK_SIZE: i64 = 1000;

#[derive(Debug, thiserror::Error)]
pub enum MetadataError {
    #[error("metadata I/O error at {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("metadata file {path} is corrupt: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error("data directory {path} belongs to node {found}, not node {expected}")]
    NodeMismatch {
        path: PathBuf,
        found: i32,
        expected: i32,
    },
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> MetadataError + '_ {
    move |source| MetadataError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// One topic as the metadata image records it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct TopicRecord {
    pub name: String,
    pub id: Uuid,
    pub partitions: i32,
    pub replication_factor: i16,
    #[serde(default)]
    pub configs: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct MetadataImage {
    topics: BTreeMap<String, TopicRecord>,
    /// Dynamic broker settings by resource name: "" is the cluster-wide default, a node id
    /// names one broker (AlterConfigs on `BROKER`).
    #[serde(default)]
    broker_configs: BTreeMap<String, BTreeMap<String, String>>,
    /// Producer ids below this were (possibly) handed out: a restart continues above it,
    /// so an id is never given to two producers.
    #[serde(default)]
    producer_id_block_end: i64,
}

/// The metadata of this node, kept in memory and on disk.
#[derive(Debug)]
pub struct MetadataStore {
    dir: PathBuf,
    cluster_id: String,
    image: MetadataImage,
    /// The next producer id of the reserved block `[next, image.producer_id_block_end)`.
    next_producer_id: i64,
    /// Whether `metadata.json` existed when opened (something to import into the quorum).
    had_image: bool,
}

impl MetadataStore {
    /// Opens the metadata under `data_dir`, creating a fresh cluster id on first start.
    pub fn open(data_dir: &Path, node_id: i32) -> Result<MetadataStore, MetadataError> {
        let dir = data_dir.join(METADATA_DIR);
        fs::create_dir_all(&dir).map_err(io_error(&dir))?;
        // Temporary files of writes a crash or a full disk interrupted (the real files
        // are intact: the rename is the commit point).
        for temp in [
            data_dir.join(format!("{META_PROPERTIES}.tmp")),
            dir.join(format!("{METADATA_FILE}.tmp")),
        ] {
            match fs::remove_file(&temp) {
                Ok(()) => {
                    tracing::warn!(path = %temp.display(), "removed a temporary file left by an interrupted write")
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_error(&temp)(e)),
            }
        }
        let cluster_id = load_or_create_meta_properties(data_dir, node_id)?;
        let path = dir.join(METADATA_FILE);
        let (image, had_image) = match fs::read(&path) {
            Ok(bytes) => (
                serde_json::from_slice(&bytes).map_err(|e| MetadataError::Corrupt {
                    path: path.clone(),
                    reason: e.to_string(),
                })?,
                true,
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => (MetadataImage::default(), false),
            Err(e) => return Err(io_error(&path)(e)),
        };
        let next_producer_id = image.producer_id_block_end;
        Ok(MetadataStore {
            dir,
            cluster_id,
            image,
            next_producer_id,
            had_image,
        })
    }

    /// Whether this directory holds a single-node metadata file (written by versions
    /// before the controller quorum; imported into the quorum once).
    pub fn has_image(&self) -> bool {
        self.had_image
    }

    /// Every dynamic broker config layer by resource name ("" = cluster default).
    pub fn all_broker_configs(&self) -> BTreeMap<String, BTreeMap<String, String>> {
        self.image.broker_configs.clone()
    }

    /// Producer ids below this may have been handed out by the single-node store.
    pub fn producer_id_block_end(&self) -> i64 {
        self.image.producer_id_block_end
    }

    pub fn cluster_id(&self) -> &str {
        &self.cluster_id
    }

    pub fn topics(&self) -> impl Iterator<Item = &TopicRecord> {
        self.image.topics.values()
    }

    pub fn topic(&self, name: &str) -> Option<&TopicRecord> {
        self.image.topics.get(name)
    }

    /// Adds or replaces a topic and persists the image.
    pub fn put_topic(&mut self, topic: TopicRecord) -> Result<(), MetadataError> {
        let previous = self.image.topics.insert(topic.name.clone(), topic.clone());
        if let Err(e) = self.persist() {
            match previous {
                Some(old) => self.image.topics.insert(old.name.clone(), old),
                None => self.image.topics.remove(&topic.name),
            };
            return Err(e);
        }
        Ok(())
    }

    /// The dynamic broker settings stored under `resource` ("" = cluster default).
    pub fn broker_configs(&self, resource: &str) -> BTreeMap<String, String> {
        self.image
            .broker_configs
            .get(resource)
            .cloned()
            .unwrap_or_default()
    }

    /// Replaces the dynamic broker settings of `resource` and persists the image.
    pub fn put_broker_configs(
        &mut self,
        resource: &str,
        configs: BTreeMap<String, String>,
    ) -> Result<(), MetadataError> {
        let previous = if configs.is_empty() {
            self.image.broker_configs.remove(resource)
        } else {
            self.image
                .broker_configs
                .insert(resource.to_string(), configs)
        };
        if let Err(e) = self.persist() {
            match previous {
                Some(old) => self.image.broker_configs.insert(resource.to_string(), old),
                None => self.image.broker_configs.remove(resource),
            };
            return Err(e);
        }
        Ok(())
    }

    /// Removes a topic and persists the image.
    pub fn remove_topic(&mut self, name: &str) -> Result<Option<TopicRecord>, MetadataError> {
        let Some(removed) = self.image.topics.remove(name) else {
            return Ok(None);
        };
        if let Err(e) = self.persist() {
            self.image.topics.insert(removed.name.clone(), removed);
            return Err(e);
        }
        Ok(Some(removed))
    }

    /// Hands out a producer id never given before, also across restarts: ids come from a
    /// block of [`PRODUCER_ID_BLOCK_SIZE`] whose end is persisted before the first id of
    /// it is used (Kafka's producer id blocks).
    pub fn allocate_producer_id(&mut self) -> Result<i64, MetadataError> {
        if self.next_producer_id >= self.image.producer_id_block_end {
            let previous_end = self.image.producer_id_block_end;
            let start = self.next_producer_id.max(previous_end);
            self.image.producer_id_block_end = start.saturating_add(PRODUCER_ID_BLOCK_SIZE);
            if let Err(e) = self.persist() {
                self.image.producer_id_block_end = previous_end;
                return Err(e);
            }
            tracing::info!(
                block_start = start,
                block_end = self.image.producer_id_block_end,
                "reserved a block of producer ids"
            );
            self.next_producer_id = start;
        }
        let id = self.next_producer_id;
        self.next_producer_id += 1;
        Ok(id)
    }

    fn persist(&self) -> Result<(), MetadataError> {
        let bytes = serde_json::to_vec_pretty(&self.image).map_err(|e| MetadataError::Corrupt {
            path: self.dir.join(METADATA_FILE),
            reason: e.to_string(),
        })?;
        write_atomically(&self.dir, METADATA_FILE, &bytes)
    }
}

/// Writes `dir/name` so that a crash leaves either the old or the new content.
pub fn write_atomically(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), MetadataError> {
    sluice_log::write_atomically(dir, name, bytes).map_err(io_error(&dir.join(name)))
}

/// Kafka keeps `meta.properties` in every log directory: the cluster id and node id it
/// belongs to. Starting a node on another node's directory is refused.
fn load_or_create_meta_properties(data_dir: &Path, node_id: i32) -> Result<String, MetadataError> {
    let path = data_dir.join(META_PROPERTIES);
    match fs::read_to_string(&path) {
        Ok(text) => {
            let mut cluster_id = None;
            let mut found_node = None;
            for line in text.lines() {
                if let Some((key, value)) = line.split_once('=') {
                    match key.trim() {
                        "cluster.id" => cluster_id = Some(value.trim().to_string()),
                        "node.id" => found_node = value.trim().parse::<i32>().ok(),
                        _ => {}
                    }
                }
            }
            let corrupt = |reason: &str| MetadataError::Corrupt {
                path: path.clone(),
                reason: reason.to_string(),
            };
            let cluster_id = cluster_id.ok_or_else(|| corrupt("no cluster.id"))?;
            let found = found_node.ok_or_else(|| corrupt("no node.id"))?;
            if found != node_id {
                return Err(MetadataError::NodeMismatch {
                    path: data_dir.to_path_buf(),
                    found,
                    expected: node_id,
                });
            }
            Ok(cluster_id)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let cluster_id = new_cluster_id();
            write_meta_properties(data_dir, &cluster_id, node_id)?;
            Ok(cluster_id)
        }
        Err(e) => Err(io_error(&path)(e)),
    }
}

/// Writes `meta.properties` (atomically): a broker that joins a cluster whose quorum has
/// another cluster id than the one its fresh directory got adopts the cluster's.
pub fn write_meta_properties(
    data_dir: &Path,
    cluster_id: &str,
    node_id: i32,
) -> Result<(), MetadataError> {
    let text = format!("version=1\ncluster.id={cluster_id}\nnode.id={node_id}\n");
    write_atomically(data_dir, META_PROPERTIES, text.as_bytes())
}

/// A cluster id in Kafka's form: 16 random bytes, URL-safe base64 without padding.
fn new_cluster_id() -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let bytes = Uuid::new_v4().into_bytes();
    let mut out = String::with_capacity(22);
    let mut bits: u32 = 0;
    let mut bit_count = 0;
    for byte in bytes {
        bits = (bits << 8) | u32::from(byte);
        bit_count += 8;
        while bit_count >= 6 {
            bit_count -= 6;
            out.push(char::from(ALPHABET[((bits >> bit_count) & 0x3f) as usize]));
        }
    }
    if bit_count > 0 {
        out.push(char::from(
            ALPHABET[((bits << (6 - bit_count)) & 0x3f) as usize],
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topic(name: &str, partitions: i32) -> TopicRecord {
        TopicRecord {
            name: name.to_string(),
            id: Uuid::new_v4(),
            partitions,
            replication_factor: 1,
            configs: BTreeMap::new(),
        }
    }

    #[test]
    fn topics_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let cluster_id = {
            let mut store = MetadataStore::open(dir.path(), 1).unwrap();
            store.put_topic(topic("a", 3)).unwrap();
            store.put_topic(topic("b", 1)).unwrap();
            store.remove_topic("b").unwrap();
            store.cluster_id().to_string()
        };
        // Half-written temporary files of an interrupted write are ignored and removed.
        let temps = [
            dir.path().join("meta.properties.tmp"),
            dir.path()
                .join(METADATA_DIR)
                .join(format!("{METADATA_FILE}.tmp")),
        ];
        for temp in &temps {
            fs::write(temp, b"{\"half").unwrap();
        }
        let store = MetadataStore::open(dir.path(), 1).unwrap();
        assert!(temps.iter().all(|temp| !temp.exists()));
        assert_eq!(store.cluster_id(), cluster_id);
        assert_eq!(cluster_id.len(), 22);
        assert_eq!(store.topic("a").map(|t| t.partitions), Some(3));
        assert!(store.topic("b").is_none());
    }

    #[test]
    fn producer_ids_are_never_reused_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let first: Vec<i64> = {
            let mut store = MetadataStore::open(dir.path(), 1).unwrap();
            (0..3)
                .map(|_| store.allocate_producer_id().unwrap())
                .collect()
        };
        assert_eq!(first, vec![0, 1, 2]);
        let mut store = MetadataStore::open(dir.path(), 1).unwrap();
        let after_restart = store.allocate_producer_id().unwrap();
        assert_eq!(after_restart, PRODUCER_ID_BLOCK_SIZE);
        for _ in 0..PRODUCER_ID_BLOCK_SIZE {
            store.allocate_producer_id().unwrap();
        }
        let mut store = MetadataStore::open(dir.path(), 1).unwrap();
        assert_eq!(
            store.allocate_producer_id().unwrap(),
            3 * PRODUCER_ID_BLOCK_SIZE
        );
    }

    #[test]
    fn another_nodes_directory_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        MetadataStore::open(dir.path(), 1).unwrap();
        let err = MetadataStore::open(dir.path(), 2).unwrap_err();
        assert!(matches!(
            err,
            MetadataError::NodeMismatch {
                found: 1,
                expected: 2,
                ..
            }
        ));
    }

    #[test]
    fn corrupt_metadata_is_an_error_not_an_empty_cluster() {
        let dir = tempfile::tempdir().unwrap();
        MetadataStore::open(dir.path(), 1).unwrap();
        fs::write(
            dir.path().join(METADATA_DIR).join(METADATA_FILE),
            b"{not json",
        )
        .unwrap();
        assert!(matches!(
            MetadataStore::open(dir.path(), 1),
            Err(MetadataError::Corrupt { .. })
        ));
    }
}
