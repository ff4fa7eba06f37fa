//! Batch codecs and timestamp types: the names the topic settings `compression.type` and
//! `message.timestamp.type` choose between.

use crate::LogError;

/// Attribute bits 0–2 of a RecordBatch: the codec of its records.
pub const ATTRIBUTE_COMPRESSION_MASK: i16 = 0b111;

/// The codec a batch's records are compressed with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompressionType {
    None,
    Gzip,
    Snappy,
    Lz4,
    Zstd,
}

impl CompressionType {
    /// The codec named by a batch's attributes; 5–7 are not codecs.
    pub fn from_attributes(attributes: i16) -> Result<CompressionType, LogError> {
        match attributes & ATTRIBUTE_COMPRESSION_MASK {
            0 => Ok(CompressionType::None),
            1 => Ok(CompressionType::Gzip),
            2 => Ok(CompressionType::Snappy),
            3 => Ok(CompressionType::Lz4),
            4 => Ok(CompressionType::Zstd),
            other => Err(LogError::InvalidBatch(format!(
                "compression codec {other} does not exist"
            ))),
        }
    }

    /// The value of attribute bits 0–2 for this codec.
    pub fn attribute_bits(self) -> i16 {
        match self {
            CompressionType::None => 0,
            CompressionType::Gzip => 1,
            CompressionType::Snappy => 2,
            CompressionType::Lz4 => 3,
            CompressionType::Zstd => 4,
        }
    }

    /// The codec named by a `compression.type` value; `None` for `producer` (keep the
    /// client's codec) and for unknown names.
    pub fn from_config_name(name: &str) -> Option<CompressionType> {
        match name {
            "uncompressed" | "none" => Some(CompressionType::None),
            "gzip" => Some(CompressionType::Gzip),
            "snappy" => Some(CompressionType::Snappy),
            "lz4" => Some(CompressionType::Lz4),
            "zstd" => Some(CompressionType::Zstd),
            _ => None,
        }
    }
}

/// Which timestamp a stored record carries (`message.timestamp.type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TimestampType {
    /// The producer's timestamp, as sent.
    #[default]
    CreateTime,
    /// The broker's append time, stamped into the batch header.
    LogAppendTime,
}

impl TimestampType {
    pub fn from_config_name(name: &str) -> Option<TimestampType> {
        match name {
            "CreateTime" => Some(TimestampType::CreateTime),
            "LogAppendTime" => Some(TimestampType::LogAppendTime),
            _ => None,
        }
    }
}
