//! Keys and MACs: HMAC-SHA256 only, no signatures.
//!
//! Keys (all 32 bytes):
//! - **Replica links**: one key per unordered pair of replicas ([`ReplicaKeys::link`]).
//!   A replica holds only the keys of its own links, so a Byzantine replica cannot speak
//!   for another. How a link frame is MACed is the ordering protocol's business
//!   (`dura_engine::protocol::auth`).
//! - **Clients**: replica `x` holds a secret `s_x`; the key it shares with client `c` is
//!   `k_cx = HMAC(s_x, "client" || c)` ([`ReplicaKeys::client_key`]). A client is
//!   provisioned with its `n` keys ([`ClientKeys`]). A request carries an
//!   *authenticator*: one MAC per replica over the request digest
//!   ([`crate::ClientRequest`]), so each replica checks its own entry, also for requests
//!   it only sees inside a leader's batch, and a Byzantine leader cannot invent a
//!   request. Replies are MACed with the same pairwise key ([`crate::Reply`]).
//!
//! Because MACs are not transferable, a replica cannot prove to a third what another
//! replica told it; protocols built on these keys (leader change, state transfer)
//! collect the evidence directly from each sender.
//!
//! [`KeyRing`] derives all of these from one master secret, for tests, the simulator
//! and local clusters; a deployment would provision each node with its own keys only.

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::ids::ReplicaId;

/// A 32-byte HMAC key.
pub type Key = [u8; 32];

/// Length of a MAC.
pub const MAC_BYTES: usize = 32;

type HmacSha256 = Hmac<Sha256>;

/// HMAC-SHA256 of the concatenation of `parts` under `key`.
pub fn mac(key: &Key, parts: &[&[u8]]) -> [u8; MAC_BYTES] {
    let mut hmac = <HmacSha256 as Mac>::new_from_slice(key).expect("HMAC takes any key length");
    for part in parts {
        hmac.update(part);
    }
    hmac.finalize().into_bytes().into()
}

/// Constant-time comparison of a MAC against the expected one.
pub fn verify_mac(key: &Key, parts: &[&[u8]], tag: &[u8]) -> bool {
    let mut hmac = <HmacSha256 as Mac>::new_from_slice(key).expect("HMAC takes any key length");
    for part in parts {
        hmac.update(part);
    }
    hmac.verify_slice(tag).is_ok()
}

/// The keys one replica holds.
#[derive(Clone)]
pub struct ReplicaKeys {
    /// This replica.
    pub id: ReplicaId,
    /// Link key shared with each replica, indexed by replica id (the entry for `id`
    /// itself is unused).
    pub links: Vec<Key>,
    /// Secret from which the keys shared with clients derive.
    pub client_secret: Key,
}

impl std::fmt::Debug for ReplicaKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplicaKeys").field("id", &self.id).finish_non_exhaustive()
    }
}

impl ReplicaKeys {
    /// The key of the link with `peer`, if `peer` is a replica.
    pub fn link(&self, peer: ReplicaId) -> Option<&Key> {
        self.links.get(peer as usize)
    }

    /// The key this replica shares with client `client_id`.
    pub fn client_key(&self, client_id: u64) -> Key {
        mac(&self.client_secret, &[b"client", &client_id.to_le_bytes()])
    }
}

/// The keys one client holds: one per replica.
#[derive(Clone)]
pub struct ClientKeys {
    /// The client.
    pub client_id: u64,
    /// Key shared with each replica, by replica id.
    pub replicas: Vec<Key>,
}

impl std::fmt::Debug for ClientKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientKeys").field("client_id", &self.client_id).finish_non_exhaustive()
    }
}

/// Derives every key of a cluster from one master secret (tests, simulator, local
/// clusters).
#[derive(Clone)]
pub struct KeyRing {
    master: Key,
    n: usize,
}

impl std::fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyRing").field("n", &self.n).finish_non_exhaustive()
    }
}

impl KeyRing {
    /// A key ring for `n` replicas.
    pub fn new(master: Key, n: usize) -> Self {
        Self { master, n }
    }

    fn link_key(&self, a: ReplicaId, b: ReplicaId) -> Key {
        let (low, high) = if a <= b { (a, b) } else { (b, a) };
        mac(&self.master, &[b"link", &low.to_le_bytes(), &high.to_le_bytes()])
    }

    fn client_secret(&self, replica: ReplicaId) -> Key {
        mac(&self.master, &[b"client-secret", &replica.to_le_bytes()])
    }

    /// The keys replica `id` holds.
    pub fn replica_keys(&self, id: ReplicaId) -> ReplicaKeys {
        ReplicaKeys {
            id,
            links: (0..self.n as ReplicaId).map(|peer| self.link_key(id, peer)).collect(),
            client_secret: self.client_secret(id),
        }
    }

    /// The keys client `client_id` holds.
    pub fn client_keys(&self, client_id: u64) -> ClientKeys {
        ClientKeys {
            client_id,
            replicas: (0..self.n as ReplicaId)
                .map(|replica| self.replica_keys(replica).client_key(client_id))
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_keys_are_symmetric_and_distinct() {
        let ring = KeyRing::new([1; 32], 4);
        let keys: Vec<_> = (0..4).map(|id| ring.replica_keys(id)).collect();
        assert_eq!(keys[0].link(2), keys[2].link(0));
        assert_ne!(keys[0].link(2), keys[1].link(2));
        assert_eq!(ring.client_keys(9).replicas[3], keys[3].client_key(9));
        assert_eq!(keys[1].link(4), None, "no link to a replica outside the ring");
    }

    #[test]
    fn a_mac_verifies_only_under_its_key_and_over_its_parts() {
        let tag = mac(&[1; 32], &[b"ab", b"c"]);
        assert!(verify_mac(&[1; 32], &[b"abc"], &tag), "parts are concatenated");
        assert!(!verify_mac(&[2; 32], &[b"abc"], &tag));
        assert!(!verify_mac(&[1; 32], &[b"abd"], &tag));
        assert!(!verify_mac(&[1; 32], &[b"abc"], &tag[..MAC_BYTES - 1]));
    }

    #[test]
    fn debug_output_never_shows_key_material() {
        let ring = KeyRing::new([0xAB; 32], 4);
        let shown = format!("{ring:?} {:?} {:?}", ring.replica_keys(1), ring.client_keys(7));
        assert!(!shown.contains("171"), "{shown}");
    }
}
