//! A read-only walker over bbolt files (the format of etcd's backend and of the snapshot files
//! `etcdctl snapshot save` writes), built for files nobody vouches for: every offset and length is
//! checked against the file, a page may be reached only once (no cycle or shared subtree can make a
//! walk loop or blow up), the tree depth is bounded, and nothing is allocated beyond what the file
//! itself holds. A damaged file is refused with a [`BoltError`], never a panic.
//!
//! The facts of the format (bbolt's `page.go`, `meta.go`, `bucket.go`), all little-endian:
//! * page header (16 bytes): id u64, flags u16 (branch 0x01, leaf 0x02, meta 0x04, freelist 0x10),
//!   count u16 (elements), overflow u32 (pages that follow this one as part of it).
//! * pages 0 and 1 are meta pages: after the header, magic u32 (`0xED0CDAED`), version u32 (2),
//!   page size u32, flags u32, root bucket (root pgid u64, sequence u64), freelist pgid u64, high
//!   water mark pgid u64, txid u64, checksum u64 = FNV-1a 64 of the meta bytes before it. The valid
//!   meta with the highest txid is the current one.
//! * branch element (16 bytes): pos u32, ksize u32, child pgid u64; leaf element (16 bytes): flags
//!   u32 (0x01: the value is a nested bucket), pos u32, ksize u32, vsize u32. `pos` counts from the
//!   element itself; a leaf's value follows its key.
//! * a bucket value is root pgid u64 + sequence u64; root 0 means an inline bucket whose leaf page
//!   follows those 16 bytes inside the value.
//!
//! Nothing here knows about etcd: [`super`] gives the buckets their meaning.

use std::io;

/// bbolt's magic number, in every meta page.
pub const MAGIC: u32 = 0xED0C_DAED;
/// The only bbolt file format version.
pub const VERSION: u32 = 2;

pub(super) const PAGE_HEADER_BYTES: usize = 16;
pub(super) const ELEMENT_BYTES: usize = 16;
pub(super) const META_BYTES: usize = 64;
/// Offset of the checksum inside the meta (what the checksum covers).
pub(super) const META_CHECKSUM_AT: usize = 56;
pub(super) const BUCKET_HEADER_BYTES: usize = 16;

pub(super) const BRANCH_PAGE: u16 = 0x01;
pub(super) const LEAF_PAGE: u16 = 0x02;
pub(super) const META_PAGE: u16 = 0x04;
pub(super) const BUCKET_LEAF_FLAG: u32 = 0x01;

/// Page sizes a file may declare (bbolt takes the OS page size: 4 KiB, 16 KiB or 64 KiB in practice).
const PAGE_SIZE_MIN: u64 = 512;
const PAGE_SIZE_MAX: u64 = 1 << 20;
/// A B+tree deeper than this holds more pages than any file can (each level at least doubles).
const TREE_DEPTH_MAX: usize = 64;

/// Why a file cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum BoltError {
    /// The file could not be read.
    #[error("{0}")]
    Io(#[from] io::Error),
    /// Neither meta page is a valid bbolt meta.
    #[error("not a bbolt database: {0}")]
    NotBolt(String),
    /// The structure points outside the file, loops, or is otherwise inconsistent.
    #[error("damaged bbolt database: {0}")]
    Corrupt(String),
}

fn corrupt(why: impl Into<String>) -> BoltError {
    BoltError::Corrupt(why.into())
}

/// Random access to the bytes of a file.
pub trait Source {
    /// Fill `buf` from `offset` (the caller has checked the range against its own length).
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
}

impl Source for [u8] {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let start = usize::try_from(offset).map_err(|_| io::ErrorKind::UnexpectedEof)?;
        let bytes = start
            .checked_add(buf.len())
            .and_then(|end| self.get(start..end))
            .ok_or(io::ErrorKind::UnexpectedEof)?;
        buf.copy_from_slice(bytes);
        Ok(())
    }
}

#[cfg(unix)]
impl Source for std::fs::File {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        std::os::unix::fs::FileExt::read_exact_at(self, buf, offset)
    }
}

/// A bucket to walk: its root page, or the bytes of its inline leaf page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Bucket {
    Pages(u64),
    Inline(Vec<u8>),
}

impl Bucket {
    /// The bucket a bucket entry's value describes.
    pub fn from_value(value: &[u8]) -> Result<Bucket, BoltError> {
        let root = read_u64(value, 0).ok_or_else(|| corrupt("bucket value too short"))?;
        if root != 0 {
            return Ok(Bucket::Pages(root));
        }
        let page = &value[BUCKET_HEADER_BYTES.min(value.len())..];
        if page.len() < PAGE_HEADER_BYTES || read_u16(page, 8) != Some(LEAF_PAGE) {
            return Err(corrupt("inline bucket without a leaf page"));
        }
        Ok(Bucket::Inline(page.to_vec()))
    }
}

/// One entry of a bucket, in key order.
#[derive(Debug, Clone, Copy)]
pub struct Entry<'a> {
    pub key: &'a [u8],
    pub value: &'a [u8],
    /// The value describes a nested bucket ([`Bucket::from_value`]).
    pub is_bucket: bool,
}

fn read_u16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(
        b.get(at..at.checked_add(2)?)?.try_into().ok()?,
    ))
}

fn read_u32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(
        b.get(at..at.checked_add(4)?)?.try_into().ok()?,
    ))
}

fn read_u64(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(
        b.get(at..at.checked_add(8)?)?.try_into().ok()?,
    ))
}

/// FNV-1a, 64 bits (bbolt's meta checksum).
pub(super) fn fnv64a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        hash ^= u64::from(*b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// A valid meta page.
#[derive(Debug, Clone, Copy)]
struct Meta {
    page_size: u64,
    root: u64,
    high_water: u64,
    txid: u64,
}

/// Decode the meta page at the start of `page` (header included), if it is a valid one.
fn parse_meta(page: &[u8]) -> Option<Meta> {
    let meta = page.get(PAGE_HEADER_BYTES..PAGE_HEADER_BYTES + META_BYTES)?;
    if read_u32(meta, 0)? != MAGIC || read_u32(meta, 4)? != VERSION {
        return None;
    }
    if read_u64(meta, META_CHECKSUM_AT)? != fnv64a(&meta[..META_CHECKSUM_AT]) {
        return None;
    }
    Some(Meta {
        page_size: u64::from(read_u32(meta, 8)?),
        root: read_u64(meta, 16)?,
        high_water: read_u64(meta, 40)?,
        txid: read_u64(meta, 48)?,
    })
}

/// Whether `head` (the first bytes of a file) starts like a bbolt file: a meta page with bbolt's
/// magic. Says nothing about the rest.
pub fn looks_like_bolt(head: &[u8]) -> bool {
    read_u16(head, 8).is_some_and(|f| f & META_PAGE != 0)
        && read_u32(head, PAGE_HEADER_BYTES) == Some(MAGIC)
}

/// An open bbolt file (its first `len` bytes: a trailer after them is not part of it).
pub struct Bolt<'s, S: Source + ?Sized> {
    src: &'s S,
    len: u64,
    meta: Meta,
}

impl<'s, S: Source + ?Sized> Bolt<'s, S> {
    /// Read and check the meta pages of the `len` bytes of `src`; the valid meta with the highest
    /// transaction id is the state the file holds.
    pub fn open(src: &'s S, len: u64) -> Result<Self, BoltError> {
        let header_and_meta = (PAGE_HEADER_BYTES + META_BYTES) as u64;
        if len < header_and_meta {
            return Err(BoltError::NotBolt(format!("{len} bytes is too short")));
        }
        let mut first = [0u8; PAGE_HEADER_BYTES + META_BYTES];
        src.read_exact_at(&mut first, 0)?;
        let meta0 = parse_meta(&first);
        // The second meta sits one page in; if the first is damaged its page size is unknown, so try
        // the sizes bbolt uses (as bbolt falls back to the OS page size).
        let mut meta1 = None;
        let candidates: &[u64] = match &meta0 {
            Some(m) => &[m.page_size],
            None => &[4096, 16384, 65536, 8192, 32768, 1024, 2048, 512],
        };
        for &size in candidates {
            if size
                .checked_add(header_and_meta)
                .is_some_and(|end| end <= len)
            {
                let mut second = [0u8; PAGE_HEADER_BYTES + META_BYTES];
                src.read_exact_at(&mut second, size)?;
                if let Some(m) = parse_meta(&second).filter(|m| m.page_size == size) {
                    meta1 = Some(m);
                    break;
                }
            }
        }
        let meta = match (meta0, meta1) {
            (Some(a), Some(b)) => {
                if b.txid > a.txid {
                    b
                } else {
                    a
                }
            }
            (Some(m), None) | (None, Some(m)) => m,
            (None, None) => {
                return Err(BoltError::NotBolt(
                    "no valid meta page (bad magic, version or checksum)".into(),
                ))
            }
        };
        if !meta.page_size.is_power_of_two()
            || !(PAGE_SIZE_MIN..=PAGE_SIZE_MAX).contains(&meta.page_size)
        {
            return Err(corrupt(format!("page size {}", meta.page_size)));
        }
        // Every page below the high water mark lies inside the file (a file may be longer).
        if meta
            .high_water
            .checked_mul(meta.page_size)
            .is_none_or(|end| end > len)
        {
            return Err(corrupt(format!(
                "{} pages of {} bytes do not fit in {len} bytes (truncated?)",
                meta.high_water, meta.page_size
            )));
        }
        if meta.root < 2 || meta.root >= meta.high_water {
            return Err(corrupt(format!("root page {} out of range", meta.root)));
        }
        Ok(Self { src, len, meta })
    }

    /// The page size the file declares.
    pub fn page_size(&self) -> u64 {
        self.meta.page_size
    }

    /// The transaction id of the state read.
    pub fn txid(&self) -> u64 {
        self.meta.txid
    }

    /// The root bucket (its entries are the top-level buckets).
    pub fn root(&self) -> Bucket {
        Bucket::Pages(self.meta.root)
    }

    /// The nested bucket `name` of `parent`, if there is one.
    pub fn bucket(&self, parent: &Bucket, name: &[u8]) -> Result<Option<Bucket>, BoltError> {
        let mut found = None;
        self.walk(parent, &mut |e: Entry<'_>| {
            if e.key == name && e.is_bucket {
                found = Some(Bucket::from_value(e.value)?);
                return Ok::<bool, BoltError>(false);
            }
            Ok(true)
        })?;
        Ok(found)
    }

    /// Call `f` on every entry of `bucket` in key order, until it returns `false`.
    pub fn walk<E: From<BoltError>>(
        &self,
        bucket: &Bucket,
        f: &mut dyn FnMut(Entry<'_>) -> Result<bool, E>,
    ) -> Result<(), E> {
        match bucket {
            Bucket::Inline(page) => {
                leaf_entries(page, f)?;
            }
            Bucket::Pages(root) => {
                let pages = usize::try_from(self.meta.high_water).map_err(|_| corrupt("size"))?;
                let mut visited = vec![0u64; pages.div_ceil(64)];
                self.walk_page(*root, 0, &mut visited, f)?;
            }
        }
        Ok(())
    }

    fn walk_page<E: From<BoltError>>(
        &self,
        id: u64,
        depth: usize,
        visited: &mut [u64],
        f: &mut dyn FnMut(Entry<'_>) -> Result<bool, E>,
    ) -> Result<bool, E> {
        if depth > TREE_DEPTH_MAX {
            return Err(corrupt(format!("tree deeper than {TREE_DEPTH_MAX} pages")).into());
        }
        let page = self.page(id, visited)?;
        let flags = read_u16(&page, 8).unwrap_or(0);
        match flags {
            LEAF_PAGE => leaf_entries(&page, f),
            BRANCH_PAGE => {
                let children = branch_children(&page)?;
                // The children's ids are all a branch level keeps while its subtrees are walked.
                drop(page);
                for child in children {
                    if !self.walk_page(child, depth + 1, visited, f)? {
                        return Ok(false);
                    }
                }
                Ok(true)
            }
            other => Err(corrupt(format!("page {id} has type {other:#x} inside a tree")).into()),
        }
    }

    /// The bytes of page `id` with its overflow pages, after checking that it lies inside the file
    /// and that none of its pages was reached before.
    fn page(&self, id: u64, visited: &mut [u64]) -> Result<Vec<u8>, BoltError> {
        let size = self.meta.page_size;
        if id < 2 || id >= self.meta.high_water {
            return Err(corrupt(format!("page {id} out of range")));
        }
        let offset = id * size; // below the high water mark: checked in `open`
        let mut header = [0u8; PAGE_HEADER_BYTES];
        self.src.read_exact_at(&mut header, offset)?;
        if read_u64(&header, 0) != Some(id) {
            return Err(corrupt(format!(
                "page {id} names itself {:?}",
                read_u64(&header, 0)
            )));
        }
        let overflow = u64::from(read_u32(&header, 12).unwrap_or(0));
        let last = id + overflow; // no overflow: both below 2^64 / 2
        if last >= self.meta.high_water {
            return Err(corrupt(format!("page {id} overflows past the last page")));
        }
        for p in id..=last {
            let (word, bit) = ((p / 64) as usize, p % 64);
            if visited[word] & (1 << bit) != 0 {
                return Err(corrupt(format!("page {p} is reached twice")));
            }
            visited[word] |= 1 << bit;
        }
        let bytes = (overflow + 1) * size;
        debug_assert!(offset + bytes <= self.len);
        let mut page = vec![0u8; bytes as usize];
        self.src.read_exact_at(&mut page, offset)?;
        Ok(page)
    }
}

/// The element at `index` of a page: its offset in the page and its four header words.
fn element(page: &[u8], index: usize) -> Result<(usize, [u32; 4]), BoltError> {
    let at = PAGE_HEADER_BYTES + index * ELEMENT_BYTES;
    let word =
        |i: usize| read_u32(page, at + 4 * i).ok_or_else(|| corrupt("element past its page"));
    Ok((at, [word(0)?, word(1)?, word(2)?, word(3)?]))
}

/// `len` bytes at `from + pos` of `page`, checked.
fn slice_at(page: &[u8], from: usize, pos: u32, len: u32) -> Result<&[u8], BoltError> {
    from.checked_add(pos as usize)
        .and_then(|start| Some((start, start.checked_add(len as usize)?)))
        .and_then(|(start, end)| page.get(start..end))
        .ok_or_else(|| corrupt("key or value past its page"))
}

fn leaf_entries<E: From<BoltError>>(
    page: &[u8],
    f: &mut dyn FnMut(Entry<'_>) -> Result<bool, E>,
) -> Result<bool, E> {
    let count = read_u16(page, 10).ok_or_else(|| corrupt("short page"))?;
    for i in 0..usize::from(count) {
        let (at, [flags, pos, ksize, vsize]) = element(page, i)?;
        let key = slice_at(page, at, pos, ksize)?;
        let value_pos = pos
            .checked_add(ksize)
            .ok_or_else(|| corrupt("key or value past its page"))?;
        let value = slice_at(page, at, value_pos, vsize)?;
        let entry = Entry {
            key,
            value,
            is_bucket: flags & BUCKET_LEAF_FLAG != 0,
        };
        if !f(entry)? {
            return Ok(false);
        }
    }
    Ok(true)
}

fn branch_children(page: &[u8]) -> Result<Vec<u64>, BoltError> {
    let count = read_u16(page, 10).ok_or_else(|| corrupt("short page"))?;
    let mut children = Vec::with_capacity(usize::from(count));
    for i in 0..usize::from(count) {
        let (at, [pos, ksize, ..]) = element(page, i)?;
        slice_at(page, at, pos, ksize)?;
        children.push(read_u64(page, at + 8).ok_or_else(|| corrupt("element past its page"))?);
    }
    Ok(children)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A small bbolt file built by hand (page size 512): the root bucket holds bucket `big` (a
    /// branch page over two leaves) and inline bucket `small`.
    pub(crate) fn sample() -> Vec<u8> {
        const PS: usize = 512;
        let mut file = vec![0u8; PS * 7];
        let header = |file: &mut Vec<u8>, id: usize, flags: u16, count: u16| {
            let p = &mut file[id * PS..];
            p[..8].copy_from_slice(&(id as u64).to_le_bytes());
            p[8..10].copy_from_slice(&flags.to_le_bytes());
            p[10..12].copy_from_slice(&count.to_le_bytes());
        };
        // A leaf page image with `entries` (key, value, flags) at `base` of `buf`.
        let leaf = |buf: &mut [u8], entries: &[(&[u8], Vec<u8>, u32)]| {
            let mut data = PAGE_HEADER_BYTES + entries.len() * ELEMENT_BYTES;
            for (i, (k, v, flags)) in entries.iter().enumerate() {
                let at = PAGE_HEADER_BYTES + i * ELEMENT_BYTES;
                let pos = (data - at) as u32;
                buf[at..at + 4].copy_from_slice(&flags.to_le_bytes());
                buf[at + 4..at + 8].copy_from_slice(&pos.to_le_bytes());
                buf[at + 8..at + 12].copy_from_slice(&(k.len() as u32).to_le_bytes());
                buf[at + 12..at + 16].copy_from_slice(&(v.len() as u32).to_le_bytes());
                buf[data..data + k.len()].copy_from_slice(k);
                buf[data + k.len()..data + k.len() + v.len()].copy_from_slice(v);
                data += k.len() + v.len();
            }
            data
        };
        for (id, txid) in [(0usize, 4u64), (1, 3)] {
            header(&mut file, id, META_PAGE, 0);
            let m = &mut file[id * PS + PAGE_HEADER_BYTES..];
            m[0..4].copy_from_slice(&MAGIC.to_le_bytes());
            m[4..8].copy_from_slice(&VERSION.to_le_bytes());
            m[8..12].copy_from_slice(&(PS as u32).to_le_bytes());
            m[16..24].copy_from_slice(&3u64.to_le_bytes()); // root bucket page
            m[32..40].copy_from_slice(&2u64.to_le_bytes()); // freelist page
            m[40..48].copy_from_slice(&7u64.to_le_bytes()); // high water mark
            m[48..56].copy_from_slice(&txid.to_le_bytes());
            let sum = fnv64a(&m[..META_CHECKSUM_AT]);
            m[56..64].copy_from_slice(&sum.to_le_bytes());
        }
        header(&mut file, 2, 0x10, 0);
        // Root: `big` -> page 4, `small` inline with two entries.
        let mut inline = vec![0u8; BUCKET_HEADER_BYTES + 128];
        let mut inline_page = vec![0u8; 128];
        inline_page[8..10].copy_from_slice(&LEAF_PAGE.to_le_bytes());
        inline_page[10..12].copy_from_slice(&2u16.to_le_bytes());
        let used = leaf(
            &mut inline_page,
            &[(b"x", b"1".to_vec(), 0), (b"y", b"2".to_vec(), 0)],
        );
        inline[BUCKET_HEADER_BYTES..].copy_from_slice(&inline_page);
        inline.truncate(BUCKET_HEADER_BYTES + used);
        let mut big = vec![0u8; BUCKET_HEADER_BYTES];
        big[..8].copy_from_slice(&4u64.to_le_bytes());
        header(&mut file, 3, LEAF_PAGE, 2);
        leaf(
            &mut file[3 * PS..4 * PS],
            &[
                (b"big", big, BUCKET_LEAF_FLAG),
                (b"small", inline, BUCKET_LEAF_FLAG),
            ],
        );
        // `big`: a branch page over leaves 5 and 6.
        header(&mut file, 4, BRANCH_PAGE, 2);
        for (i, (key, child)) in [(b"a", 5u64), (b"m", 6u64)].iter().enumerate() {
            let at = 4 * PS + PAGE_HEADER_BYTES + i * ELEMENT_BYTES;
            let pos = (PAGE_HEADER_BYTES + 2 * ELEMENT_BYTES + i - (at - 4 * PS)) as u32;
            file[at..at + 4].copy_from_slice(&pos.to_le_bytes());
            file[at + 4..at + 8].copy_from_slice(&1u32.to_le_bytes());
            file[at + 8..at + 16].copy_from_slice(&child.to_le_bytes());
            file[(at + pos as usize)..(at + pos as usize + 1)].copy_from_slice(&key[..]);
        }
        header(&mut file, 5, LEAF_PAGE, 2);
        leaf(
            &mut file[5 * PS..6 * PS],
            &[(b"a", b"A".to_vec(), 0), (b"b", b"B".to_vec(), 0)],
        );
        header(&mut file, 6, LEAF_PAGE, 1);
        leaf(&mut file[6 * PS..7 * PS], &[(b"m", b"M".to_vec(), 0)]);
        file
    }

    type Pair = (Vec<u8>, Vec<u8>);

    fn entries(bolt: &Bolt<'_, [u8]>, bucket: &Bucket) -> Result<Vec<Pair>, BoltError> {
        let mut out = Vec::new();
        bolt.walk(bucket, &mut |e: Entry<'_>| {
            out.push((e.key.to_vec(), e.value.to_vec()));
            Ok::<_, BoltError>(true)
        })?;
        Ok(out)
    }

    fn pairs(items: &[(&str, &str)]) -> Vec<Pair> {
        items
            .iter()
            .map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec()))
            .collect()
    }

    #[test]
    fn reads_paged_and_inline_buckets_in_key_order() {
        let file = sample();
        assert!(looks_like_bolt(&file));
        let bolt = Bolt::open(&file[..], file.len() as u64).unwrap();
        assert_eq!(bolt.txid(), 4);
        assert_eq!(bolt.page_size(), 512);
        let big = bolt.bucket(&bolt.root(), b"big").unwrap().unwrap();
        assert_eq!(
            entries(&bolt, &big).unwrap(),
            pairs(&[("a", "A"), ("b", "B"), ("m", "M")])
        );
        let small = bolt.bucket(&bolt.root(), b"small").unwrap().unwrap();
        assert!(matches!(small, Bucket::Inline(_)));
        assert_eq!(
            entries(&bolt, &small).unwrap(),
            pairs(&[("x", "1"), ("y", "2")])
        );
        assert_eq!(bolt.bucket(&bolt.root(), b"none").unwrap(), None);
    }

    #[test]
    fn the_meta_with_the_highest_valid_txid_wins() {
        let mut file = sample();
        // Damage meta 0 (txid 4): meta 1 (txid 3) is used, its page size found by probing.
        file[PAGE_HEADER_BYTES + 20] ^= 1;
        let bolt = Bolt::open(&file[..], file.len() as u64).unwrap();
        assert_eq!(bolt.txid(), 3);
        file[512 + PAGE_HEADER_BYTES + 20] ^= 1;
        let err = Bolt::open(&file[..], file.len() as u64).err().unwrap();
        assert!(matches!(err, BoltError::NotBolt(_)), "{err}");
    }

    #[test]
    fn damaged_structures_are_refused_not_followed() {
        let file = sample();
        let open = |f: &Vec<u8>| -> Result<(), BoltError> {
            let bolt = Bolt::open(&f[..], f.len() as u64)?;
            let big = bolt
                .bucket(&bolt.root(), b"big")?
                .ok_or(corrupt("no big"))?;
            entries(&bolt, &big).map(|_| ())
        };
        // Truncated: the high water mark is past the end.
        let err = open(&file[..file.len() - 512].to_vec()).unwrap_err();
        assert!(err.to_string().contains("truncated"), "{err}");
        // A branch pointing at itself.
        let mut cyclic = file.clone();
        let child = 4 * 512 + PAGE_HEADER_BYTES + 8;
        cyclic[child..child + 8].copy_from_slice(&4u64.to_le_bytes());
        let err = open(&cyclic).unwrap_err();
        assert!(err.to_string().contains("reached twice"), "{err}");
        // A value length past the page.
        let mut long = file.clone();
        let vsize = 5 * 512 + PAGE_HEADER_BYTES + 12;
        long[vsize..vsize + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        let err = open(&long).unwrap_err();
        assert!(err.to_string().contains("past its page"), "{err}");
        // An overflow count past the file.
        let mut overflow = file.clone();
        overflow[6 * 512 + 12..6 * 512 + 16].copy_from_slice(&u32::MAX.to_le_bytes());
        let err = open(&overflow).unwrap_err();
        assert!(err.to_string().contains("overflows"), "{err}");
        // A page that does not name itself.
        let mut misnamed = file.clone();
        misnamed[5 * 512] = 9;
        assert!(open(&misnamed).is_err());
        // Every single-byte change and every truncation either reads or is refused: never a panic.
        for at in 0..file.len() {
            let mut f = file.clone();
            f[at] ^= 0xff;
            let _ = open(&f);
        }
        for len in 0..file.len() {
            let _ = open(&file[..len].to_vec());
        }
    }
}
