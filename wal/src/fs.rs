//! Which file system holds a log, and whether the log trusts it to honour `O_DSYNC`.
//!
//! [`DurabilityMode::DirectDsync`] and [`DurabilityMode::Dsync`] count a write durable when
//! it returns, because the file was opened with `O_DSYNC`. Only the file system can keep
//! that promise, and some do not reliably: on FUSE an io_uring `O_DIRECT|O_DSYNC` write was
//! seen reaching the daemon with no sync request after it (with LazyFS, and with a small
//! probe without dura). [`Wal::open`](crate::Wal::open) therefore reads the file system type
//! of the log directory ([`FileSystem::of`]) and, on the few file systems listed in
//! [`FileSystem::dsync_doubt`], writes with an explicit `fdatasync` after each write instead
//! ([`choose_durability`]), saying so in one log line. The operator can insist on the
//! configured mode ([`crate::WalOptions::trust_dsync`]).
//!
//! The list is short on purpose: switching costs throughput, so a file system is on it
//! only with a reason to doubt it. Not on it:
//!
//! * ext4, xfs, btrfs, f2fs, tmpfs: local file systems that implement `O_DSYNC` in the
//!   kernel (tmpfs holds nothing across a power failure whatever the mode).
//! * overlayfs (containers): it hands each write, with its flags, to the file of the upper
//!   file system (usually ext4 or xfs), which honours them.
//! * NFS: the kernel client implements `O_DSYNC` itself (stable writes, or a COMMIT before
//!   the write returns). A server exported `async` acknowledges before its disk does, and
//!   does so for an explicit `fdatasync` (a COMMIT) too: switching would not help there.
//! * anything unknown (SMB, Ceph, ZFS, ...): no failure seen; the list grows with evidence.

use std::fmt;
use std::io;
use std::path::Path;

use crate::io::DurabilityMode;

/// `FUSE_SUPER_MAGIC`: every FUSE file system (sshfs, s3fs, LazyFS, ntfs-3g, virtiofs).
pub const FUSE_SUPER_MAGIC: u32 = 0x6573_5546;
/// `V9FS_MAGIC`: 9p (qemu virtfs shares, WSL2's Windows drives).
pub const V9FS_MAGIC: u32 = 0x0102_1997;
/// `EXT4_SUPER_MAGIC` (also ext2 and ext3).
pub const EXT4_SUPER_MAGIC: u32 = 0xEF53;
/// `XFS_SUPER_MAGIC`.
pub const XFS_SUPER_MAGIC: u32 = 0x5846_5342;
/// `TMPFS_MAGIC`.
pub const TMPFS_MAGIC: u32 = 0x0102_1994;
/// `OVERLAYFS_SUPER_MAGIC`.
pub const OVERLAYFS_SUPER_MAGIC: u32 = 0x794C_7630;
/// `NFS_SUPER_MAGIC`.
pub const NFS_SUPER_MAGIC: u32 = 0x6969;

/// Names of the file systems a log is likely to meet, for log lines.
const NAMES: [(u32, &str); 16] = [
    (EXT4_SUPER_MAGIC, "ext4"),
    (XFS_SUPER_MAGIC, "xfs"),
    (0x9123_683E, "btrfs"),
    (0xF2F5_2010, "f2fs"),
    (0x2FC1_2FC1, "zfs"),
    (TMPFS_MAGIC, "tmpfs"),
    (0x8584_58F6, "ramfs"),
    (OVERLAYFS_SUPER_MAGIC, "overlayfs"),
    (NFS_SUPER_MAGIC, "nfs"),
    (0xFF53_4D42, "cifs"),
    (0xFE53_4D42, "smb2"),
    (0x00C3_6400, "ceph"),
    (FUSE_SUPER_MAGIC, "fuse"),
    (V9FS_MAGIC, "9p"),
    (0x5346_544E, "ntfs"),
    (0x4D44, "vfat"),
];

/// A file system type, as `statfs(2)` reports it (`f_type`, a `*_MAGIC` number of
/// `linux/magic.h`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FileSystem {
    magic: u32,
}

impl FileSystem {
    /// The file system with type `magic`.
    pub const fn from_magic(magic: u32) -> FileSystem {
        FileSystem { magic }
    }

    /// The file system holding `path` (`statfs(2)`).
    pub fn of(path: &Path) -> io::Result<FileSystem> {
        crate::sys::statfs_type(path).map(FileSystem::from_magic)
    }

    /// Its magic number.
    pub fn magic(self) -> u32 {
        self.magic
    }

    /// Its usual name, when it is one the crate knows.
    pub fn name(self) -> Option<&'static str> {
        NAMES.iter().find(|(magic, _)| *magic == self.magic).map(|(_, name)| *name)
    }

    /// Why writes opened with `O_DSYNC` may return before they are durable on this file
    /// system, or `None` where the kernel honours `O_DSYNC` (or nothing says otherwise).
    pub fn dsync_doubt(self) -> Option<&'static str> {
        match self.magic {
            FUSE_SUPER_MAGIC => Some(
                "a FUSE daemon decides what O_DSYNC means, and an O_DIRECT|O_DSYNC write was \
                 seen reaching one with no sync after it; an fdatasync is always passed on",
            ),
            V9FS_MAGIC => Some(
                "9p hands writes to a host server (qemu virtfs, WSL) that need not write its \
                 file synchronously; an fdatasync is passed on as an explicit fsync request",
            ),
            _ => None,
        }
    }
}

impl fmt::Display for FileSystem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => f.write_str(name),
            None => write!(f, "file system type {:#x}", self.magic),
        }
    }
}

/// Why [`choose_durability`] chose its mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DsyncDecision {
    /// The configured mode does not rely on `O_DSYNC` (`fdatasync`, `async-unsafe`), or
    /// the file system is trusted to honour it.
    AsConfigured,
    /// The file system is not trusted to honour `O_DSYNC`: each write is followed by an
    /// explicit `fdatasync` instead.
    Switched {
        /// The file system.
        file_system: FileSystem,
        /// Why it is not trusted.
        why: &'static str,
    },
    /// The file system is not trusted, but the operator asked to keep the configured
    /// mode ([`crate::WalOptions::trust_dsync`]).
    KeptOnRequest {
        /// The file system.
        file_system: FileSystem,
        /// Why it is not trusted.
        why: &'static str,
    },
    /// The file system could not be told (`statfs` failed); the configured mode stands.
    FileSystemUnknown,
}

/// The mode a log writes with, and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DurabilityChoice {
    /// The mode in effect.
    pub mode: DurabilityMode,
    /// Why.
    pub decision: DsyncDecision,
}

/// The mode a log on `file_system` (`None`: unknown) writes with when `configured` was
/// asked for: [`DurabilityMode::Fdatasync`] where `configured` relies on `O_DSYNC` and
/// the file system is not trusted to honour it ([`FileSystem::dsync_doubt`]), unless
/// `trust_dsync`; `configured` otherwise.
pub fn choose_durability(
    file_system: Option<FileSystem>,
    configured: DurabilityMode,
    trust_dsync: bool,
) -> DurabilityChoice {
    let as_configured = |decision| DurabilityChoice { mode: configured, decision };
    if !configured.relies_on_dsync() {
        return as_configured(DsyncDecision::AsConfigured);
    }
    let Some(file_system) = file_system else {
        return as_configured(DsyncDecision::FileSystemUnknown);
    };
    match file_system.dsync_doubt() {
        None => as_configured(DsyncDecision::AsConfigured),
        Some(why) if trust_dsync => {
            as_configured(DsyncDecision::KeptOnRequest { file_system, why })
        }
        Some(why) => DurabilityChoice {
            mode: DurabilityMode::Fdatasync,
            decision: DsyncDecision::Switched { file_system, why },
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FUSE: FileSystem = FileSystem::from_magic(FUSE_SUPER_MAGIC);
    const NINE_P: FileSystem = FileSystem::from_magic(V9FS_MAGIC);

    #[test]
    fn dsync_modes_switch_to_fdatasync_on_fuse_and_9p() {
        for file_system in [FUSE, NINE_P] {
            for configured in [DurabilityMode::DirectDsync, DurabilityMode::Dsync] {
                let choice = choose_durability(Some(file_system), configured, false);
                assert_eq!(choice.mode, DurabilityMode::Fdatasync, "{file_system} {configured}");
                let DsyncDecision::Switched { file_system: named, why } = choice.decision else {
                    panic!("{file_system} {configured}: {choice:?}");
                };
                assert_eq!(named, file_system);
                assert!(why.contains("fdatasync"), "{why}");
            }
        }
    }

    #[test]
    fn the_operator_can_keep_a_dsync_mode_on_a_doubted_file_system() {
        for configured in [DurabilityMode::DirectDsync, DurabilityMode::Dsync] {
            let choice = choose_durability(Some(FUSE), configured, true);
            assert_eq!(choice.mode, configured);
            assert!(matches!(
                choice.decision,
                DsyncDecision::KeptOnRequest { file_system: FUSE, .. }
            ));
        }
    }

    #[test]
    fn modes_without_dsync_stand_everywhere() {
        for file_system in [Some(FUSE), Some(NINE_P), None] {
            for configured in [DurabilityMode::Fdatasync, DurabilityMode::AsyncUnsafe] {
                for trust_dsync in [false, true] {
                    assert_eq!(
                        choose_durability(file_system, configured, trust_dsync),
                        DurabilityChoice {
                            mode: configured,
                            decision: DsyncDecision::AsConfigured
                        }
                    );
                }
            }
        }
    }

    #[test]
    fn trusted_and_unknown_file_systems_keep_the_configured_mode() {
        let trusted = [
            EXT4_SUPER_MAGIC,
            XFS_SUPER_MAGIC,
            TMPFS_MAGIC,
            OVERLAYFS_SUPER_MAGIC,
            NFS_SUPER_MAGIC,
            0x1234_5678,
        ];
        for magic in trusted {
            let file_system = FileSystem::from_magic(magic);
            assert_eq!(file_system.dsync_doubt(), None, "{file_system}");
            for configured in [DurabilityMode::DirectDsync, DurabilityMode::Dsync] {
                assert_eq!(
                    choose_durability(Some(file_system), configured, false),
                    DurabilityChoice { mode: configured, decision: DsyncDecision::AsConfigured }
                );
            }
        }
        let unknown = choose_durability(None, DurabilityMode::DirectDsync, false);
        assert_eq!(unknown.mode, DurabilityMode::DirectDsync);
        assert_eq!(unknown.decision, DsyncDecision::FileSystemUnknown);
    }

    #[test]
    fn names_and_the_file_system_of_a_real_directory() {
        assert_eq!(FUSE.to_string(), "fuse");
        assert_eq!(FileSystem::from_magic(EXT4_SUPER_MAGIC).to_string(), "ext4");
        assert_eq!(FileSystem::from_magic(0x1234_5678).to_string(), "file system type 0x12345678");
        let dir = tempfile::tempdir().expect("tempdir");
        let here = FileSystem::of(dir.path()).expect("statfs of a temp dir");
        assert_ne!(here.magic(), 0, "{here}");
        assert!(FileSystem::of(&dir.path().join("absent")).is_err());
    }
}
