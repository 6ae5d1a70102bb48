//! Authentication with HMAC-SHA256: the keys and MACs are `dura_core::auth`'s
//! (re-exported here); this module seals and opens replica link frames.
//!
//! - **Replica links**: one key per unordered pair of replicas. A frame from `a` to `b`
//!   is `[from: u32 LE][message][HMAC(k_ab, SHA-256("dura-frame" || from || message))]`
//!   ([`seal_frame`], [`open_frame`]). MACing the body's digest rather than the body
//!   lets a broadcast hash its (large, batch-carrying) body once and MAC 32 bytes per
//!   link ([`seal_frames`]); SHA-256's collision resistance keeps the tag binding the
//!   whole body. A replica holds only the keys of its own links, so a Byzantine
//!   replica cannot speak for another.
//! - **Clients**: request authenticators and reply MACs, see [`dura_core::auth`].
//!
//! [`KeyRing`] derives all keys from one master secret, for tests, the simulator and
//! local clusters; a deployment would provision each node with its own keys only.

use std::sync::Arc;

use sha2::{Digest, Sha256};

pub use dura_core::auth::{ClientKeys, Key, KeyRing, MAC_BYTES, ReplicaKeys, mac, verify_mac};

use super::message::Message;
use super::{ProtocolError, ReplicaId};

/// The digest a frame's MAC covers: SHA-256 over a domain tag and the frame body
/// (`from` and the encoded message).
fn frame_digest(body: &[u8]) -> [u8; 32] {
    let mut sha = Sha256::new();
    sha.update(b"dura-frame");
    sha.update(body);
    sha.finalize().into()
}

/// Encodes `message` from `from` as an authenticated frame for the link keyed `key`.
pub fn seal_frame(key: &Key, from: ReplicaId, message: &Message) -> Vec<u8> {
    let mut frame = Vec::with_capacity(64);
    frame.extend_from_slice(&from.to_le_bytes());
    message.encode(&mut frame);
    let tag = mac(key, &[&frame_digest(&frame)]);
    frame.extend_from_slice(&tag);
    frame
}

/// [`seal_frame`] for several links at once, one frame per key in `keys` (in order):
/// the message is encoded and hashed once, then each frame is the shared body plus
/// its link's MAC, copied once into its own shared buffer (what the network queues).
/// Byte for byte what [`seal_frame`] makes for each key.
pub fn seal_frames<'k>(
    keys: impl IntoIterator<Item = &'k Key>,
    from: ReplicaId,
    message: &Message,
) -> Vec<Arc<[u8]>> {
    let mut frame = Vec::with_capacity(64);
    frame.extend_from_slice(&from.to_le_bytes());
    message.encode(&mut frame);
    let body_len = frame.len();
    let digest = frame_digest(&frame);
    frame.extend_from_slice(&[0u8; MAC_BYTES]);
    keys.into_iter()
        .map(|key| {
            frame[body_len..].copy_from_slice(&mac(key, &[&digest]));
            Arc::from(frame.as_slice())
        })
        .collect()
}

/// Authenticates and decodes a frame made by [`seal_frame`]. `link_key` maps the
/// claimed sender to the key of the link with it (`None`: unknown sender).
pub fn open_frame<'k>(
    frame: &[u8],
    link_key: impl Fn(ReplicaId) -> Option<&'k Key>,
) -> Result<(ReplicaId, Message), ProtocolError> {
    if frame.len() < 4 + MAC_BYTES {
        return Err(ProtocolError::Malformed { what: "frame", offset: frame.len() });
    }
    let (body, tag) = frame.split_at(frame.len() - MAC_BYTES);
    let from = u32::from_le_bytes([body[0], body[1], body[2], body[3]]);
    let key = link_key(from).ok_or(ProtocolError::Unauthenticated { what: "frame sender" })?;
    if !verify_mac(key, &[&frame_digest(body)], tag) {
        return Err(ProtocolError::Unauthenticated { what: "frame" });
    }
    let message = Message::decode(&body[4..])?;
    Ok((from, message))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_from_the_wrong_link_is_rejected() {
        let ring = KeyRing::new([7; 32], 4);
        let a = ring.replica_keys(0);
        let b = ring.replica_keys(1);
        let c = ring.replica_keys(2);
        let message = Message::Stop { regency: 3 };
        let frame = seal_frame(a.link(1).expect("peer"), 0, &message);
        let (from, decoded) = open_frame(&frame, |peer| b.link(peer)).expect("authentic");
        assert_eq!((from, decoded), (0, message.clone()));
        // Replica 2 forges a frame claiming to be replica 0.
        let forged = seal_frame(c.link(1).expect("peer"), 0, &message);
        assert!(open_frame(&forged, |peer| b.link(peer)).is_err());
        // A flipped bit fails.
        let mut flipped = frame.clone();
        flipped[5] ^= 1;
        assert!(open_frame(&flipped, |peer| b.link(peer)).is_err());
    }

    #[test]
    fn a_broadcast_sealed_once_gives_each_link_the_frame_seal_frame_makes() {
        let ring = KeyRing::new([3; 32], 4);
        let leader = ring.replica_keys(1);
        let message = Message::Stop { regency: 9 };
        let peers = [0u32, 2, 3];
        let frames = seal_frames(peers.iter().map(|&p| leader.link(p).expect("peer")), 1, &message);
        assert_eq!(frames.len(), peers.len());
        for (&peer, frame) in peers.iter().zip(&frames) {
            assert_eq!(&frame[..], &seal_frame(leader.link(peer).expect("peer"), 1, &message)[..]);
            let receiver = ring.replica_keys(peer);
            let (from, decoded) = open_frame(frame, |p| receiver.link(p)).expect("authentic");
            assert_eq!((from, decoded), (1, message.clone()));
            // The frame for one link does not open on another.
            let other = ring.replica_keys(if peer == 0 { 2 } else { 0 });
            assert!(open_frame(frame, |p| other.link(p)).is_err());
        }
        // Any flipped body bit fails, also past the part a short MAC input would cover.
        let mut flipped = frames[0].to_vec();
        let last_body_byte = flipped.len() - MAC_BYTES - 1;
        flipped[last_body_byte] ^= 1;
        let first_peer = ring.replica_keys(0);
        assert!(open_frame(&flipped, |p| first_peer.link(p)).is_err());
    }
}
