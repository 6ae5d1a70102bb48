//! The checkpoint file format: names, header, chunk frames and the content hash.
//! Everything is little-endian and at fixed offsets; `snapshot/FORMAT.md` is the same
//! description for readers outside the code.
//!
//! ## Files
//!
//! A checkpoint taken after agreement `a` is named `checkpoint-{a:020}.dck`; while it is
//! being written it is `checkpoint-{a:020}.dck.tmp`. Nothing else in the name: two
//! replicas at the same agreement choose the same name.
//!
//! ## Layout
//!
//! ```text
//! header (HEADER_FIXED_BYTES + engine_bytes, zero-padded to a multiple of 16)
//!   0  [u8; 8]  magic            MAGIC ("DURACKPT")
//!   8  u32      version          FORMAT_VERSION
//!  12  u32      engine_bytes     <= ENGINE_BYTES_LIMIT
//!  16  u64      agreement_id     the checkpoint holds the state after this agreement
//!  24  u64      chunk_count      <= CHUNK_COUNT_MAX
//!  32  u64      content_bytes    sum of the chunks' payload_bytes
//!  40  [u8; 32] content_sha256   see "Content hash"
//!  72  u8       service_bytes    1..=SERVICE_NAME_BYTES_MAX
//!  73  [u8; 7]  zero
//!  80  [u8; 64] service name     UTF-8, zero-padded
//! 144  u64      header_checksum  xxh3-64 of header bytes [0, 144) then [152, header end)
//! 152  [u8; 8]  zero
//! 160  [u8; engine_bytes]        engine metadata, opaque here
//!      zero padding to a multiple of 16
//!
//! chunk_count chunks, each at a multiple of 16:
//!   0  u8       section          0 = Engine, 1 = Service
//!   1  [u8; 3]  zero
//!   4  u32      payload_bytes    <= the chunk limit (CHUNK_BYTES_LIMIT)
//!   8  u64      chunk_checksum   xxh3-64 of frame bytes [0, 8) then the payload
//!  16  [u8; payload_bytes]       payload, opaque here (rkyv archives, from services)
//!      zero padding to a multiple of 16
//!
//! end of file right after the last chunk's padding
//! ```
//!
//! Every payload starts at a file offset that is a multiple of [`PAYLOAD_ALIGN`]
//! (the header and every frame are multiples of 16 long), so a loader reading a payload
//! into a 16-aligned buffer hands the service an aligned archive.
//!
//! ## Content hash
//!
//! `content_sha256` is SHA-256 over, in order:
//!
//! ```text
//! MAGIC, FORMAT_VERSION (u32), service_bytes (u8), service name,
//! agreement_id (u64), engine_bytes (u32), engine metadata,
//! for each chunk in file order: section (u8), payload_bytes (u64), payload
//! ```
//!
//! It names what a replica would install, independently of the file's padding and
//! checksums: state transfer compares it across replicas, and two replicas with equal
//! state at the same agreement get the same hash. [`ContentHasher`] computes it.
//!
//! ## What a loader checks
//!
//! The header checksum covers every header byte but its own field, so every damaged
//! header byte is caught; a frame's checksum covers its section, reserved bytes and
//! length, and the payload; padding must be zero; the file must end exactly after
//! `chunk_count` chunks; the header's agreement id must be the one in the file's name.
//! The content hash is the last check and catches what chunk
//! checksums cannot (a chunk dropped, repeated or reordered with its frame).

use dura_core::{AgreementId, Hash};
use sha2::{Digest, Sha256};
use xxhash_rust::xxh3::Xxh3;

/// The first 8 bytes of every checkpoint file.
pub const MAGIC: [u8; 8] = *b"DURACKPT";

/// The format version this crate writes and reads.
pub const FORMAT_VERSION: u32 = 1;

/// Largest chunk payload in bytes: the limit every service's chunks keep
/// (`dura_core::service::CHUNK_BYTES_LIMIT`, 2 x 16 MiB).
pub const CHUNK_BYTES_LIMIT: usize = dura_core::service::CHUNK_BYTES_LIMIT;
const _: () = assert!(CHUNK_BYTES_LIMIT == 32 << 20, "FORMAT.md states 32 MiB");

/// Largest engine metadata blob in bytes.
pub const ENGINE_BYTES_LIMIT: usize = 64 << 10;

/// Longest service name in bytes (UTF-8).
pub const SERVICE_NAME_BYTES_MAX: usize = 64;

/// Most chunks in one checkpoint (16 Mi: 256 MiB of frames alone).
pub const CHUNK_COUNT_MAX: u64 = 1 << 24;

/// Alignment of every payload's file offset, and of the buffers loaders hand out.
pub const PAYLOAD_ALIGN: usize = 16;

/// Bytes of the header before the engine metadata.
pub const HEADER_FIXED_BYTES: usize = 160;

/// Bytes of a chunk frame (before the payload).
pub const FRAME_BYTES: usize = 16;

/// Offset of `header_checksum` in the header.
pub const HEADER_CHECKSUM_OFFSET: usize = 144;

/// Offset of `content_sha256` in the header (where a content hash mismatch is reported).
pub const CONTENT_SHA256_OFFSET: usize = 40;

/// Offset of `agreement_id` in the header.
pub const AGREEMENT_ID_OFFSET: usize = 16;

/// Offset of `engine_bytes` in the header.
pub(crate) const ENGINE_BYTES_OFFSET: usize = 12;

/// Offset of `version` in the header.
pub(crate) const VERSION_OFFSET: usize = 8;

/// Offset of `service_bytes` in the header.
pub(crate) const SERVICE_BYTES_OFFSET: usize = 72;

/// Offset of the service name in the header (where a service mismatch is reported).
pub const SERVICE_NAME_OFFSET: usize = 80;

const NAME_PREFIX: &str = "checkpoint-";
const NAME_SUFFIX: &str = ".dck";
const TEMP_SUFFIX: &str = ".dck.tmp";
const NAME_DIGITS: usize = 20;

const _: () = assert!(CHUNK_BYTES_LIMIT <= u32::MAX as usize, "payload_bytes is a u32");
const _: () = assert!(ENGINE_BYTES_LIMIT <= u32::MAX as usize, "engine_bytes is a u32");
const _: () = assert!(SERVICE_NAME_BYTES_MAX <= u8::MAX as usize, "service_bytes is a u8");
const _: () = assert!(SERVICE_NAME_OFFSET + SERVICE_NAME_BYTES_MAX == HEADER_CHECKSUM_OFFSET);
const _: () = assert!(HEADER_FIXED_BYTES.is_multiple_of(PAYLOAD_ALIGN));
const _: () = assert!(FRAME_BYTES.is_multiple_of(PAYLOAD_ALIGN));
const _: () = assert!(PAYLOAD_ALIGN.is_power_of_two());

/// Which part of the replica a chunk belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u8)]
pub enum Section {
    /// The engine's own state (the executor's reply cache).
    Engine = 0,
    /// The service's state.
    Service = 1,
}

impl Section {
    /// The byte a frame stores.
    pub const fn to_byte(self) -> u8 {
        self as u8
    }

    /// The section a frame's byte names, if any.
    pub const fn from_byte(byte: u8) -> Option<Section> {
        match byte {
            0 => Some(Section::Engine),
            1 => Some(Section::Service),
            _ => None,
        }
    }
}

/// The name of the checkpoint taken after `agreement_id`.
pub fn file_name(agreement_id: AgreementId) -> String {
    format!("{NAME_PREFIX}{agreement_id:0NAME_DIGITS$}{NAME_SUFFIX}")
}

/// The name of that checkpoint while it is being written.
pub fn temp_name(agreement_id: AgreementId) -> String {
    format!("{NAME_PREFIX}{agreement_id:0NAME_DIGITS$}{TEMP_SUFFIX}")
}

/// What a directory entry is, by its name alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NameKind {
    /// A checkpoint, with its agreement id.
    Checkpoint(AgreementId),
    /// A checkpoint being written (or left behind by a crash).
    Temp,
    /// Looks like a checkpoint (prefix and suffix) but the id is not 20 digits of a u64.
    Malformed,
    /// Anything else.
    Unrelated,
}

/// Classifies a directory entry's name.
pub fn classify_name(name: &str) -> NameKind {
    let Some(rest) = name.strip_prefix(NAME_PREFIX) else { return NameKind::Unrelated };
    if rest.ends_with(TEMP_SUFFIX) {
        return NameKind::Temp;
    }
    let Some(digits) = rest.strip_suffix(NAME_SUFFIX) else { return NameKind::Unrelated };
    if digits.len() != NAME_DIGITS || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return NameKind::Malformed;
    }
    match digits.parse::<u64>() {
        Ok(agreement_id) => NameKind::Checkpoint(agreement_id),
        Err(_) => NameKind::Malformed,
    }
}

/// `value` rounded up to a multiple of [`PAYLOAD_ALIGN`].
pub const fn pad16(value: u64) -> u64 {
    value.next_multiple_of(PAYLOAD_ALIGN as u64)
}

/// Bytes of a header holding `engine_bytes` of engine metadata.
pub const fn header_bytes(engine_bytes: usize) -> usize {
    (HEADER_FIXED_BYTES + engine_bytes).next_multiple_of(PAYLOAD_ALIGN)
}

/// The decoded header of a checkpoint file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointHeader {
    /// The service whose state this is.
    pub service: String,
    /// The checkpoint holds the state after this agreement.
    pub agreement_id: AgreementId,
    /// The engine's metadata (opaque here).
    pub engine: Vec<u8>,
    /// Number of chunks.
    pub chunk_count: u64,
    /// Sum of the chunks' payload lengths.
    pub content_bytes: u64,
    /// SHA-256 of the content (module docs, "Content hash").
    pub content_sha256: Hash,
}

impl CheckpointHeader {
    /// Bytes the encoded header takes in the file (a multiple of 16).
    pub fn encoded_bytes(&self) -> usize {
        header_bytes(self.engine.len())
    }

    /// Encodes the header. Panics if a field is out of its bound (callers validate
    /// first: the writer refuses such input with a typed error).
    pub fn encode(&self) -> Vec<u8> {
        let service = self.service.as_bytes();
        assert!(!service.is_empty() && service.len() <= SERVICE_NAME_BYTES_MAX);
        assert!(self.engine.len() <= ENGINE_BYTES_LIMIT);
        assert!(self.chunk_count <= CHUNK_COUNT_MAX);
        let mut out = vec![0u8; self.encoded_bytes()];
        out[0..8].copy_from_slice(&MAGIC);
        put_u32(&mut out, VERSION_OFFSET, FORMAT_VERSION);
        put_u32(&mut out, ENGINE_BYTES_OFFSET, self.engine.len() as u32);
        put_u64(&mut out, AGREEMENT_ID_OFFSET, self.agreement_id);
        put_u64(&mut out, 24, self.chunk_count);
        put_u64(&mut out, 32, self.content_bytes);
        out[CONTENT_SHA256_OFFSET..CONTENT_SHA256_OFFSET + 32]
            .copy_from_slice(&self.content_sha256);
        out[SERVICE_BYTES_OFFSET] = service.len() as u8;
        out[SERVICE_NAME_OFFSET..SERVICE_NAME_OFFSET + service.len()].copy_from_slice(service);
        out[HEADER_FIXED_BYTES..HEADER_FIXED_BYTES + self.engine.len()]
            .copy_from_slice(&self.engine);
        let checksum = header_checksum(&out);
        put_u64(&mut out, HEADER_CHECKSUM_OFFSET, checksum);
        out
    }
}

/// Why a header's bytes are not a valid header, with the offset of the bad field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HeaderFault {
    /// The magic is not [`MAGIC`] (offset 0).
    Magic,
    /// Another format version (offset 8).
    Version(u32),
    /// `engine_bytes` over [`ENGINE_BYTES_LIMIT`] (offset 12).
    EngineBytes(u32),
    /// The checksum does not match (offset 144).
    Checksum {
        /// Stored value.
        stored: u64,
        /// Value computed over the bytes.
        computed: u64,
    },
    /// A field with a valid checksum but out of its bounds (a writer's bug): its offset
    /// and name.
    Field(usize, &'static str),
}

impl HeaderFault {
    pub(crate) fn offset(self) -> usize {
        match self {
            HeaderFault::Magic => 0,
            HeaderFault::Version(_) => VERSION_OFFSET,
            HeaderFault::EngineBytes(_) => ENGINE_BYTES_OFFSET,
            HeaderFault::Checksum { .. } => HEADER_CHECKSUM_OFFSET,
            HeaderFault::Field(offset, _) => offset,
        }
    }
}

/// Checks the fixed part's magic, version and engine length (before its checksum can be
/// computed) and returns the whole header's length. `fixed` is the first
/// [`HEADER_FIXED_BYTES`] bytes.
pub(crate) fn decode_header_bytes(fixed: &[u8]) -> Result<usize, HeaderFault> {
    assert_eq!(fixed.len(), HEADER_FIXED_BYTES);
    if fixed[0..8] != MAGIC {
        return Err(HeaderFault::Magic);
    }
    let version = get_u32(fixed, VERSION_OFFSET);
    if version != FORMAT_VERSION {
        return Err(HeaderFault::Version(version));
    }
    let engine_bytes = get_u32(fixed, ENGINE_BYTES_OFFSET);
    if engine_bytes as usize > ENGINE_BYTES_LIMIT {
        return Err(HeaderFault::EngineBytes(engine_bytes));
    }
    Ok(header_bytes(engine_bytes as usize))
}

/// Decodes a whole header (`bytes` is exactly the length [`decode_header_bytes`] gave).
pub(crate) fn decode_header(bytes: &[u8]) -> Result<CheckpointHeader, HeaderFault> {
    let header_len = decode_header_bytes(&bytes[..HEADER_FIXED_BYTES])?;
    assert_eq!(bytes.len(), header_len);
    let stored = get_u64(bytes, HEADER_CHECKSUM_OFFSET);
    let computed = header_checksum(bytes);
    if stored != computed {
        return Err(HeaderFault::Checksum { stored, computed });
    }
    // The checksum holds: from here a bad field is a writer's bug, still refused.
    let engine_bytes = get_u32(bytes, ENGINE_BYTES_OFFSET) as usize;
    let chunk_count = get_u64(bytes, 24);
    if chunk_count > CHUNK_COUNT_MAX {
        return Err(HeaderFault::Field(24, "chunk_count"));
    }
    let service_bytes = bytes[SERVICE_BYTES_OFFSET] as usize;
    if service_bytes == 0 || service_bytes > SERVICE_NAME_BYTES_MAX {
        return Err(HeaderFault::Field(SERVICE_BYTES_OFFSET, "service_bytes"));
    }
    if bytes[SERVICE_BYTES_OFFSET + 1..SERVICE_NAME_OFFSET].iter().any(|&b| b != 0) {
        return Err(HeaderFault::Field(SERVICE_BYTES_OFFSET + 1, "reserved"));
    }
    let name_end = SERVICE_NAME_OFFSET + service_bytes;
    let Ok(service) = std::str::from_utf8(&bytes[SERVICE_NAME_OFFSET..name_end]) else {
        return Err(HeaderFault::Field(SERVICE_NAME_OFFSET, "service name (not UTF-8)"));
    };
    if bytes[name_end..HEADER_CHECKSUM_OFFSET].iter().any(|&b| b != 0) {
        return Err(HeaderFault::Field(name_end, "service name padding"));
    }
    if bytes[HEADER_CHECKSUM_OFFSET + 8..HEADER_FIXED_BYTES].iter().any(|&b| b != 0) {
        return Err(HeaderFault::Field(HEADER_CHECKSUM_OFFSET + 8, "reserved"));
    }
    let engine_end = HEADER_FIXED_BYTES + engine_bytes;
    if bytes[engine_end..].iter().any(|&b| b != 0) {
        return Err(HeaderFault::Field(engine_end, "header padding"));
    }
    let mut content_sha256 = [0u8; 32];
    content_sha256.copy_from_slice(&bytes[CONTENT_SHA256_OFFSET..CONTENT_SHA256_OFFSET + 32]);
    Ok(CheckpointHeader {
        service: service.to_owned(),
        agreement_id: get_u64(bytes, AGREEMENT_ID_OFFSET),
        engine: bytes[HEADER_FIXED_BYTES..engine_end].to_vec(),
        chunk_count,
        content_bytes: get_u64(bytes, 32),
        content_sha256,
    })
}

/// xxh3-64 of a header's bytes except its checksum field.
fn header_checksum(bytes: &[u8]) -> u64 {
    let mut hasher = Xxh3::new();
    hasher.update(&bytes[..HEADER_CHECKSUM_OFFSET]);
    hasher.update(&bytes[HEADER_CHECKSUM_OFFSET + 8..]);
    hasher.digest()
}

/// A chunk frame, as decoded (not yet checked against its payload).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Frame {
    pub(crate) section: Section,
    pub(crate) payload_bytes: u32,
    pub(crate) checksum: u64,
}

/// Why a frame's 16 bytes are not a frame: the offset within the frame and what.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FrameFault {
    Section(u8),
    Reserved,
}

impl Frame {
    /// The frame of `payload` in `section`.
    pub(crate) fn new(section: Section, payload: &[u8]) -> Frame {
        assert!(payload.len() <= CHUNK_BYTES_LIMIT);
        let mut frame = Frame { section, payload_bytes: payload.len() as u32, checksum: 0 };
        frame.checksum = frame.checksum_of(payload);
        frame
    }

    /// The frame's bytes.
    pub(crate) fn encode(&self) -> [u8; FRAME_BYTES] {
        let mut out = [0u8; FRAME_BYTES];
        out[0] = self.section.to_byte();
        put_u32(&mut out, 4, self.payload_bytes);
        put_u64(&mut out, 8, self.checksum);
        out
    }

    /// Decodes a frame's bytes (bounds on the length are the caller's: they depend on
    /// the loader's limit and the file's length).
    pub(crate) fn decode(bytes: &[u8; FRAME_BYTES]) -> Result<Frame, FrameFault> {
        let section = Section::from_byte(bytes[0]).ok_or(FrameFault::Section(bytes[0]))?;
        if bytes[1..4].iter().any(|&b| b != 0) {
            return Err(FrameFault::Reserved);
        }
        Ok(Frame { section, payload_bytes: get_u32(bytes, 4), checksum: get_u64(bytes, 8) })
    }

    /// The checksum `payload` must have under this frame: xxh3-64 of the frame's first
    /// 8 bytes (section, reserved, length), then the payload.
    pub(crate) fn checksum_of(&self, payload: &[u8]) -> u64 {
        assert_eq!(payload.len(), self.payload_bytes as usize);
        let mut hasher = Xxh3::new();
        hasher.update(&self.encode()[..8]);
        hasher.update(payload);
        hasher.digest()
    }
}

/// Computes a checkpoint's content SHA-256 (module docs, "Content hash") incrementally:
/// the writer while it streams, the loader while it validates, and state transfer over
/// chunks it receives.
#[derive(Debug, Clone)]
pub struct ContentHasher {
    sha: Sha256,
}

impl ContentHasher {
    /// Starts the hash of the checkpoint of `service` after `agreement_id` with engine
    /// metadata `engine`. Panics if the name or the metadata exceed their bounds.
    pub fn new(service: &str, agreement_id: AgreementId, engine: &[u8]) -> ContentHasher {
        assert!(!service.is_empty() && service.len() <= SERVICE_NAME_BYTES_MAX);
        assert!(engine.len() <= ENGINE_BYTES_LIMIT);
        let mut sha = Sha256::new();
        sha.update(MAGIC);
        sha.update(FORMAT_VERSION.to_le_bytes());
        sha.update([service.len() as u8]);
        sha.update(service.as_bytes());
        sha.update(agreement_id.to_le_bytes());
        sha.update((engine.len() as u32).to_le_bytes());
        sha.update(engine);
        ContentHasher { sha }
    }

    /// Adds the next chunk.
    pub fn chunk(&mut self, section: Section, payload: &[u8]) {
        self.sha.update([section.to_byte()]);
        self.sha.update((payload.len() as u64).to_le_bytes());
        self.sha.update(payload);
    }

    /// The hash of everything added.
    pub fn finish(self) -> Hash {
        self.sha.finalize().into()
    }
}

fn put_u32(out: &mut [u8], offset: usize, value: u32) {
    out[offset..offset + 4].copy_from_slice(&value.to_le_bytes());
}

fn put_u64(out: &mut [u8], offset: usize, value: u64) {
    out[offset..offset + 8].copy_from_slice(&value.to_le_bytes());
}

fn get_u32(bytes: &[u8], offset: usize) -> u32 {
    u32::from_le_bytes(bytes[offset..offset + 4].try_into().expect("4 bytes"))
}

fn get_u64(bytes: &[u8], offset: usize) -> u64 {
    u64::from_le_bytes(bytes[offset..offset + 8].try_into().expect("8 bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(engine: &[u8]) -> CheckpointHeader {
        CheckpointHeader {
            service: "kv".to_owned(),
            agreement_id: 42,
            engine: engine.to_vec(),
            chunk_count: 3,
            content_bytes: 100,
            content_sha256: [7; 32],
        }
    }

    #[test]
    fn header_round_trips_and_every_byte_is_covered() {
        for engine_len in [0usize, 1, 15, 16, 17, 300] {
            let header = header(&vec![0xab; engine_len]);
            let bytes = header.encode();
            assert_eq!(bytes.len() % PAYLOAD_ALIGN, 0);
            assert_eq!(decode_header_bytes(&bytes[..HEADER_FIXED_BYTES]), Ok(bytes.len()));
            assert_eq!(decode_header(&bytes).as_ref(), Ok(&header));
            for offset in 0..bytes.len() {
                let mut damaged = bytes.clone();
                damaged[offset] ^= 0x01;
                let fault = decode_header_bytes(&damaged[..HEADER_FIXED_BYTES])
                    .and_then(|len| {
                        if len == damaged.len() {
                            decode_header(&damaged).map(|_| ())
                        } else {
                            Err(HeaderFault::EngineBytes(0))
                        }
                    })
                    .expect_err("a flipped header bit is caught");
                let _ = fault.offset();
            }
        }
    }

    #[test]
    fn names_classify() {
        assert_eq!(file_name(7), "checkpoint-00000000000000000007.dck");
        assert_eq!(classify_name(&file_name(7)), NameKind::Checkpoint(7));
        assert_eq!(classify_name(&file_name(u64::MAX)), NameKind::Checkpoint(u64::MAX));
        assert_eq!(classify_name(&temp_name(7)), NameKind::Temp);
        assert_eq!(classify_name("checkpoint-7.dck"), NameKind::Malformed);
        assert_eq!(classify_name("checkpoint-99999999999999999999.dck"), NameKind::Malformed);
        assert_eq!(classify_name("checkpoint-0000000000000000000x.dck"), NameKind::Malformed);
        assert_eq!(classify_name("member"), NameKind::Unrelated);
        assert_eq!(classify_name("checkpoint-00000000000000000007.wal"), NameKind::Unrelated);
    }

    #[test]
    fn frame_checksum_covers_section_and_length() {
        let frame = Frame::new(Section::Engine, b"abc");
        let decoded = Frame::decode(&frame.encode()).expect("decodes");
        assert_eq!(decoded, frame);
        let other = Frame { section: Section::Service, ..frame };
        assert_ne!(other.checksum_of(b"abc"), frame.checksum);
        assert_eq!(Frame::decode(&[9; FRAME_BYTES]), Err(FrameFault::Section(9)));
        let mut reserved = frame.encode();
        reserved[2] = 1;
        assert_eq!(Frame::decode(&reserved), Err(FrameFault::Reserved));
    }
}
