//! [`KvClient`]: typed SCKV-Store operations over the runtime's client.

use dura_engine::runtime::{Client, ClientOptions, ClusterConfig, Pending, RuntimeError};

use crate::ops::{CodecError, KvOp, KvReply};

/// Errors of [`KvClient`].
#[derive(Debug, thiserror::Error)]
pub enum KvError {
    /// The operation is out of bounds (key or value too long).
    #[error("invalid operation: {0}")]
    Invalid(#[from] CodecError),
    /// The cluster could not be reached or did not answer in time.
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    /// The replicas answered something that is not a reply to this operation.
    #[error("unexpected reply: {0:?}")]
    UnexpectedReply(KvReply),
}

/// A client of an SCKV-Store cluster. Shareable between threads; concurrent calls are
/// ordered concurrently (each uses its own protocol session).
#[derive(Debug, Clone)]
pub struct KvClient {
    client: Client,
}

impl KvClient {
    /// Connects to the cluster of `config`.
    pub fn connect(config: &ClusterConfig) -> Result<KvClient, KvError> {
        Ok(KvClient { client: Client::connect(config)? })
    }

    /// Connects with explicit options.
    pub fn connect_with(
        config: &ClusterConfig,
        options: ClientOptions,
    ) -> Result<KvClient, KvError> {
        Ok(KvClient { client: Client::connect_with(config, options)? })
    }

    /// The underlying runtime client.
    pub fn raw(&self) -> &Client {
        &self.client
    }

    fn call(&self, op: KvOp<'_>) -> Result<KvReply, KvError> {
        let bytes = op.encode()?;
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
        Ok(self.client.submit(KvOp::Put { key, value }.encode()?))
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

    /// Sets `key` to `new` if it holds `expected` (None: is absent); whether it swapped.
    pub fn cas(&self, key: &[u8], expected: Option<&[u8]>, new: &[u8]) -> Result<bool, KvError> {
        match self.call(KvOp::Cas { key, expected, new })? {
            KvReply::Flag(swapped) => Ok(swapped),
            other => Err(KvError::UnexpectedReply(other)),
        }
    }
}
