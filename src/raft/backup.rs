//! The backup file `Maintenance.Snapshot` streams (what `etcdctl snapshot save` writes) and
//! `metastore snapshot restore` reads. etcdctl checks the framing etcd uses: a body whose length is
//! a multiple of 512 bytes followed by the SHA-256 of that body. Our body is a magic line, the
//! length of the state machine image, the image, and zero padding. Not etcd's bbolt file: a backup
//! moves between MetaStore clusters, not to etcd.

use std::io;

use sha2::{Digest, Sha256};

use super::state_machine::{restore_image, Shared};
use crate::storage::Engine;

/// First bytes of every backup.
pub const MAGIC: &[u8] = b"metastore-backup-v1\n";

/// etcdctl wants the body (before the hash) to be whole 512-byte pages, as a bbolt file is.
const PAGE: usize = 512;
const HASH_BYTES: usize = 32;

/// A consistent backup of the replicated state.
pub fn create(shared: &Shared) -> io::Result<Vec<u8>> {
    let (_, _, image) = shared.image()?;
    let mut out = Vec::with_capacity(MAGIC.len() + 8 + image.len() + PAGE + HASH_BYTES);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(image.len() as u64).to_be_bytes());
    out.extend_from_slice(&image);
    out.resize(out.len().div_ceil(PAGE) * PAGE, 0);
    let hash = Sha256::digest(&out);
    out.extend_from_slice(&hash);
    Ok(out)
}

/// Check a backup and write its data into `engine` (which must be empty). Returns the number of
/// key-value records restored.
pub fn restore(engine: &dyn Engine, backup: &[u8]) -> io::Result<usize> {
    let invalid = |why: &str| io::Error::new(io::ErrorKind::InvalidData, why.to_string());
    if !backup.starts_with(MAGIC) || backup.len() < MAGIC.len() + 8 + HASH_BYTES {
        return Err(invalid("not a MetaStore backup (bad header)"));
    }
    let (body, hash) = backup.split_at(backup.len() - HASH_BYTES);
    if Sha256::digest(body).as_slice() != hash {
        return Err(invalid(
            "backup checksum mismatch: the file is damaged or truncated",
        ));
    }
    let rest = &body[MAGIC.len()..];
    let (len, rest) = rest.split_at(8);
    let len = u64::from_be_bytes(len.try_into().expect("8 bytes")) as usize;
    let image = rest
        .get(..len)
        .ok_or_else(|| invalid("backup image shorter than its header says"))?;
    restore_image(engine, image)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn damaged_backups_are_refused() {
        let engine = crate::storage::MemoryEngine::new();
        assert!(restore(&engine, b"nonsense").is_err());
        let mut fake = MAGIC.to_vec();
        fake.extend_from_slice(&[0; 48]);
        let err = restore(&engine, &fake).expect_err("bad checksum");
        assert!(err.to_string().contains("checksum"), "{err}");
    }
}
