//! [`KvClient`]: typed SCKV-Store operations over the runtime's client.

use dura_engine::runtime::config::OperationBound;
use dura_engine::runtime::{Client, ClientOptions, ClusterConfig, Pending, RuntimeError};

use crate::ops::{
    CodecError, KvOp, KvReply, PUT_OVERHEAD_BYTES, SCAN_REPLY_BYTES_MAX, ScanPage, VALUE_BYTES_MAX,
};

/// Errors of [`KvClient`].
#[derive(Debug, thiserror::Error)]
pub enum KvError {
    /// The operation is out of bounds (key or value too long).
    #[error("invalid operation: {0}")]
    Invalid(#[from] CodecError),
    /// The cluster could not be reached or did not answer in time.
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    /// The operation is longer than this cluster carries; it was not sent.
    #[error("operation of {operation_bytes} bytes is over this cluster's bound of {bound}")]
    TooLarge {
        /// The encoded operation's length.
        operation_bytes: usize,
        /// The cluster's bound and what sets it.
        bound: OperationBound,
    },
    /// The replicas answered something that is not a reply to this operation.
    #[error("unexpected reply: {0:?}")]
    UnexpectedReply(KvReply),
}

/// The longest value a put under a key of `key_bytes` may carry in a cluster whose
/// operations are bounded by `bound` ([`ClusterConfig::operation_bound`]).
pub fn value_bytes_max(bound: OperationBound, key_bytes: usize) -> usize {
    bound.operation_bytes_max.saturating_sub(PUT_OVERHEAD_BYTES + key_bytes).min(VALUE_BYTES_MAX)
}

/// A client of an SCKV-Store cluster. Shareable between threads; concurrent calls are
/// ordered concurrently (each uses its own protocol session).
#[derive(Debug, Clone)]
pub struct KvClient {
    client: Client,
    bound: OperationBound,
    n: u32,
    replies_needed: usize,
}

impl KvClient {
    /// Connects to the cluster of `config`.
    pub fn connect(config: &ClusterConfig) -> Result<KvClient, KvError> {
        Self::connect_with(config, ClientOptions::new())
    }

    /// Connects with explicit options.
    pub fn connect_with(
        config: &ClusterConfig,
        options: ClientOptions,
    ) -> Result<KvClient, KvError> {
        Ok(KvClient {
            client: Client::connect_with(config, options)?,
            bound: config.operation_bound(),
            n: config.n(),
            replies_needed: config.mode.reply_quorum(config.f as usize),
        })
    }

    /// The largest operation this cluster carries, and what sets it.
    pub fn operation_bound(&self) -> OperationBound {
        self.bound
    }

    /// The longest value a put under a key of `key_bytes` may carry in this cluster.
    pub fn value_bytes_max(&self, key_bytes: usize) -> usize {
        value_bytes_max(self.bound, key_bytes)
    }

    /// Replicas with an open connection, and how many [`KvClient::connect`] needs for
    /// a reply to be possible at all (f+1 matching replies, in both modes): the caller
    /// can tell an unreachable cluster from a slow one.
    pub fn connected_replicas(&self) -> (usize, usize) {
        (self.client.connected_replicas(self.n), self.replies_needed)
    }

    /// The underlying runtime client.
    pub fn raw(&self) -> &Client {
        &self.client
    }

    /// Encodes `op`, refusing it if this cluster cannot carry it.
    fn encode(&self, op: KvOp<'_>) -> Result<Vec<u8>, KvError> {
        let operation_bytes = op.encoded_len();
        if operation_bytes > self.bound.operation_bytes_max {
            return Err(KvError::TooLarge { operation_bytes, bound: self.bound });
        }
        Ok(op.encode()?)
    }

    fn call(&self, op: KvOp<'_>) -> Result<KvReply, KvError> {
        let bytes = self.encode(op)?;
        let reply = KvReply::decode(&self.client.invoke(bytes)?)?;
        match reply {
            KvReply::Invalid(reason) => Err(KvError::UnexpectedReply(KvReply::Invalid(reason))),
            reply => Ok(reply),
        }
    }

    /// Stores `value` under `key`.
    pub fn put(&self, key: &[u8], value: &[u8]) -> Result<(), KvError> {
        match self.call(KvOp::Put { key, value })? {
            KvReply::Done => Ok(()),
            other => Err(KvError::UnexpectedReply(other)),
        }
    }

    /// Submits a put and returns at once; [`KvClient::finish_put`] waits for it.
    pub fn submit_put(&self, key: &[u8], value: &[u8]) -> Result<Pending, KvError> {
        Ok(self.client.submit(self.encode(KvOp::Put { key, value })?))
    }

    /// Waits for a put submitted with [`KvClient::submit_put`].
    pub fn finish_put(pending: Pending) -> Result<(), KvError> {
        match KvReply::decode(&pending.wait()?)? {
            KvReply::Done => Ok(()),
            other => Err(KvError::UnexpectedReply(other)),
        }
    }

    /// The value under `key` (read through ordering).
    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, KvError> {
        match self.call(KvOp::Get { key })? {
            KvReply::Value(value) => Ok(value),
            other => Err(KvError::UnexpectedReply(other)),
        }
    }

    /// Removes `key`; whether it existed.
    pub fn delete(&self, key: &[u8]) -> Result<bool, KvError> {
        match self.call(KvOp::Delete { key })? {
            KvReply::Flag(existed) => Ok(existed),
            other => Err(KvError::UnexpectedReply(other)),
        }
    }

    /// One page of the keys in `[start, end)` (None: to the last key), in key order,
    /// read through ordering like [`KvClient::get`] (linearizable). At most `limit`
    /// (1..=[`SCAN_LIMIT_MAX`](crate::ops::SCAN_LIMIT_MAX)) entries, and at most
    /// [`KvClient::scan_reply_bytes_max`] entry bytes beyond the first entry; when
    /// either cut the range short, `more` is the key to scan from next. Pages of one
    /// range scanned one after the other are each linearizable, not the whole.
    pub fn scan(&self, start: &[u8], end: Option<&[u8]>, limit: u32) -> Result<ScanPage, KvError> {
        let reply_bytes_max = self.scan_reply_bytes_max();
        match self.call(KvOp::Scan { start, end, limit, reply_bytes_max })? {
            KvReply::Range(page) => Ok(page),
            other => Err(KvError::UnexpectedReply(other)),
        }
    }

    /// The reply bound this client asks scans for: [`SCAN_REPLY_BYTES_MAX`], or half
    /// the cluster's operation bound when that is smaller (which keeps replies within
    /// the cluster's frames).
    pub fn scan_reply_bytes_max(&self) -> u32 {
        u32::try_from(self.bound.operation_bytes_max / 2)
            .unwrap_or(u32::MAX)
            .min(SCAN_REPLY_BYTES_MAX)
    }

    /// Sets `key` to `new` if it holds `expected` (None: is absent); whether it swapped.
    pub fn cas(&self, key: &[u8], expected: Option<&[u8]>, new: &[u8]) -> Result<bool, KvError> {
        match self.call(KvOp::Cas { key, expected, new })? {
            KvReply::Flag(swapped) => Ok(swapped),
            other => Err(KvError::UnexpectedReply(other)),
        }
    }
}
