//! Writes bbolt files front to back, one page at a time, from records that arrive in key order:
//! the writing half of [`super::bbolt`] (whose module docs give the format's facts). Nothing here
//! knows about etcd.
//!
//! A bbolt file is a B+tree of pages whose parents name their children by page id, and a page's id
//! is its place in the file. Records arrive sorted, so a bucket's tree is built bottom-up: a leaf
//! page is filled until the next record does not fit, then written, and its first key goes up to
//! the branch level above, which is filled and written the same way. Every page is written when it
//! is closed, children before their parents, so a page's id is simply the next free one and
//! nothing is kept but the one open page of each level (a tree of a million leaves is four levels
//! deep). A bucket that ends small enough is kept inline in its parent's entry instead, as bbolt
//! does; the root bucket, whose entries are the buckets, is written last.
//!
//! The two meta pages that open the file name the root bucket's page and the number of pages, which
//! are known only at the end: a caller lays the file out once without keeping its bytes
//! ([`Pages::counting`]) and then writes it for real ([`Pages::writing`]); the same records give the
//! same layout. No freelist page is written (`freelist` = bbolt's "none"): every page is reachable
//! from the root, and bbolt rebuilds an empty freelist when it opens the file, as it does for the
//! snapshot files etcd 3.5 writes itself.

use std::io;

use super::bbolt::{
    fnv64a, BRANCH_PAGE, BUCKET_HEADER_BYTES, BUCKET_LEAF_FLAG, ELEMENT_BYTES, LEAF_PAGE, MAGIC,
    META_BYTES, META_CHECKSUM_AT, META_PAGE, PAGE_HEADER_BYTES, VERSION,
};

/// A bucket entry's flags: a plain record.
pub const PLAIN: u32 = 0;
/// A bucket entry's flags: the value describes a nested bucket.
pub const NESTED_BUCKET: u32 = BUCKET_LEAF_FLAG;

/// bbolt's page id meaning "no freelist page" (`pgidNoFreelist`).
const NO_FREELIST: u64 = u64::MAX;
/// The first page after the two meta pages.
pub const FIRST_DATA_PAGE: u64 = 2;

fn invalid(why: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, why)
}

/// Where closed pages go: page ids are handed out in file order, and the bytes of each page are
/// appended to a buffer the caller drains (or, when only counting, dropped).
pub struct Pages {
    page_size: usize,
    next_id: u64,
    out: Vec<u8>,
    keep: bool,
}

impl Pages {
    /// Lay out pages from [`FIRST_DATA_PAGE`] on without keeping their bytes.
    pub fn counting(page_size: usize) -> Self {
        Self::new(page_size, false)
    }

    /// Write pages from [`FIRST_DATA_PAGE`] on into the buffer [`Pages::take`] drains.
    pub fn writing(page_size: usize) -> Self {
        Self::new(page_size, true)
    }

    fn new(page_size: usize, keep: bool) -> Self {
        // Elements are 16 bytes and a page counts them in a u16.
        assert!(page_size.is_power_of_two() && page_size / ELEMENT_BYTES <= usize::from(u16::MAX));
        Self {
            page_size,
            next_id: FIRST_DATA_PAGE,
            out: Vec::new(),
            keep,
        }
    }

    /// The id the next page will get: once everything is written, the file's page count.
    pub fn next_id(&self) -> u64 {
        self.next_id
    }

    /// Put the two meta pages ([`meta_pages`]) before the first page written.
    pub fn put_meta(&mut self, meta: &[u8]) {
        assert!(self.out.is_empty() && self.next_id == FIRST_DATA_PAGE);
        assert_eq!(meta.len(), 2 * self.page_size);
        if self.keep {
            self.out.extend_from_slice(meta);
        }
    }

    /// Bytes written and not yet taken.
    pub fn pending_bytes(&self) -> usize {
        self.out.len()
    }

    /// The bytes written since the last call.
    pub fn take(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.out)
    }

    /// Write one page (with as many overflow pages as `image` needs) and return its id. `image`
    /// is the page without its header's id and overflow, which are filled in here.
    fn write(&mut self, image: &Image) -> u64 {
        let id = self.next_id;
        let pages = image.len.div_ceil(self.page_size).max(1);
        self.next_id += pages as u64;
        if self.keep {
            let start = self.out.len();
            image.append_to(&mut self.out, id, (pages - 1) as u32);
            self.out.resize(start + pages * self.page_size, 0);
        }
        id
    }
}

/// The contents of a page being filled: its elements' words and the bytes they point at.
#[derive(Default)]
struct Node {
    /// Per element: leaf (flags, key size, value size) or branch (key size, child id as two words).
    elements: Vec<[u32; 3]>,
    /// Keys (and, in a leaf, each key's value after it) in element order.
    data: Vec<u8>,
}

impl Node {
    fn bytes(&self) -> usize {
        PAGE_HEADER_BYTES + self.elements.len() * ELEMENT_BYTES + self.data.len()
    }

    fn is_empty(&self) -> bool {
        self.elements.is_empty()
    }

    fn first_key(&self, leaf: bool) -> &[u8] {
        let ksize = if leaf {
            self.elements[0][1]
        } else {
            self.elements[0][0]
        };
        &self.data[..ksize as usize]
    }

    fn image(&self, leaf: bool) -> Image<'_> {
        Image {
            flags: if leaf { LEAF_PAGE } else { BRANCH_PAGE },
            node: self,
            len: self.bytes(),
        }
    }

    fn clear(&mut self) {
        self.elements.clear();
        self.data.clear();
    }
}

/// A page as it will be written.
struct Image<'n> {
    flags: u16,
    node: &'n Node,
    len: usize,
}

impl Image<'_> {
    /// Append header, elements and data (no padding): `pos` counts from each element to its key.
    fn append_to(&self, out: &mut Vec<u8>, id: u64, overflow: u32) {
        let elements = &self.node.elements;
        out.extend_from_slice(&id.to_le_bytes());
        out.extend_from_slice(&self.flags.to_le_bytes());
        out.extend_from_slice(&(elements.len() as u16).to_le_bytes());
        out.extend_from_slice(&overflow.to_le_bytes());
        let mut data_at = elements.len() * ELEMENT_BYTES;
        for (i, e) in elements.iter().enumerate() {
            let pos = (data_at - i * ELEMENT_BYTES) as u32;
            if self.flags == LEAF_PAGE {
                let [flags, ksize, vsize] = *e;
                for word in [flags, pos, ksize, vsize] {
                    out.extend_from_slice(&word.to_le_bytes());
                }
                data_at += (ksize + vsize) as usize;
            } else {
                let [ksize, child_lo, child_hi] = *e;
                for word in [pos, ksize, child_lo, child_hi] {
                    out.extend_from_slice(&word.to_le_bytes());
                }
                data_at += ksize as usize;
            }
        }
        out.extend_from_slice(&self.node.data);
    }
}

/// Where a finished bucket lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BucketRoot {
    /// Its tree's root page.
    Page(u64),
    /// Its only leaf page, stored in the bucket's entry (ids and overflow zero).
    Inline(Vec<u8>),
}

impl BucketRoot {
    /// The value of the bucket's entry in its parent: root page id, sequence (0), inline page.
    pub fn entry_value(&self) -> Vec<u8> {
        let mut value = Vec::with_capacity(BUCKET_HEADER_BYTES);
        match self {
            BucketRoot::Page(id) => {
                value.extend_from_slice(&id.to_le_bytes());
                value.extend_from_slice(&0u64.to_le_bytes());
            }
            BucketRoot::Inline(page) => {
                value.extend_from_slice(&[0u8; BUCKET_HEADER_BYTES]);
                value.extend_from_slice(page);
            }
        }
        value
    }
}

/// Builds one bucket's tree from its records in key order.
pub struct TreeWriter {
    leaf: Node,
    /// The open page of each branch level, lowest first.
    branches: Vec<Node>,
    /// Whether any page of this tree was written (then it cannot be inline).
    wrote: bool,
    /// Whether the bucket may end inline (bbolt inlines only buckets without nested buckets).
    inline_allowed: bool,
    /// The last key added (its buffer is reused), to check the order.
    last_key: Vec<u8>,
    any_key: bool,
}

impl TreeWriter {
    /// A bucket whose records are plain values; it ends inline if it is small.
    pub fn new() -> Self {
        Self::with_inline(true)
    }

    /// A bucket whose records are nested buckets (the root bucket): always in pages.
    pub fn of_buckets() -> Self {
        Self::with_inline(false)
    }

    fn with_inline(inline_allowed: bool) -> Self {
        Self {
            leaf: Node::default(),
            branches: Vec::new(),
            wrote: false,
            inline_allowed,
            last_key: Vec::new(),
            any_key: false,
        }
    }

    /// Add a record; `flags` is [`NESTED_BUCKET`] for a nested bucket's entry. Keys must be
    /// non-empty and strictly ascending (bbolt finds keys by binary search): anything else is
    /// refused before it is written.
    pub fn add(
        &mut self,
        pages: &mut Pages,
        flags: u32,
        key: &[u8],
        value: &[u8],
    ) -> io::Result<()> {
        if key.is_empty() {
            return Err(invalid("a bbolt key cannot be empty".into()));
        }
        if self.any_key && self.last_key.as_slice() >= key {
            return Err(invalid(format!(
                "bbolt keys out of order: {key:?} after {:?}",
                self.last_key
            )));
        }
        self.any_key = true;
        self.last_key.clear();
        self.last_key.extend_from_slice(key);
        let size = ELEMENT_BYTES + key.len() + value.len();
        if !self.leaf.is_empty() && self.leaf.bytes() + size > pages.page_size {
            self.close_leaf(pages);
        }
        self.leaf
            .elements
            .push([flags, key.len() as u32, value.len() as u32]);
        self.leaf.data.extend_from_slice(key);
        self.leaf.data.extend_from_slice(value);
        Ok(())
    }

    /// Write the open leaf and hand its first key up.
    fn close_leaf(&mut self, pages: &mut Pages) {
        let id = pages.write(&self.leaf.image(true));
        self.wrote = true;
        let first = self.leaf.first_key(true).to_vec();
        self.leaf.clear();
        self.add_child(pages, 0, &first, id);
    }

    /// Add child `id` (whose first key is `key`) to branch level `level`.
    fn add_child(&mut self, pages: &mut Pages, level: usize, key: &[u8], id: u64) {
        if self.branches.len() == level {
            self.branches.push(Node::default());
        }
        let size = ELEMENT_BYTES + key.len();
        let node = &self.branches[level];
        if !node.is_empty() && node.bytes() + size > pages.page_size {
            self.close_branch(pages, level);
        }
        let node = &mut self.branches[level];
        node.elements
            .push([key.len() as u32, id as u32, (id >> 32) as u32]);
        node.data.extend_from_slice(key);
    }

    fn close_branch(&mut self, pages: &mut Pages, level: usize) {
        let node = &mut self.branches[level];
        let id = pages.write(&node.image(false));
        let first = node.first_key(false).to_vec();
        node.clear();
        self.add_child(pages, level + 1, &first, id);
    }

    /// Write what is still open and say where the bucket's root is.
    pub fn finish(mut self, pages: &mut Pages) -> BucketRoot {
        let max_inline = pages.page_size / 4; // bbolt's maxInlineBucketSize
        if !self.wrote && self.inline_allowed && self.leaf.bytes() <= max_inline {
            let mut page = Vec::with_capacity(self.leaf.bytes());
            self.leaf.image(true).append_to(&mut page, 0, 0);
            return BucketRoot::Inline(page);
        }
        if !self.leaf.is_empty() || !self.wrote {
            // An empty bucket in pages is one empty leaf.
            let id = pages.write(&self.leaf.image(true));
            if self.branches.is_empty() {
                return BucketRoot::Page(id);
            }
            let first = self.leaf.first_key(true).to_vec();
            self.add_child(pages, 0, &first, id);
        }
        // Close each level upwards; the top level's only child is the root.
        let mut level = 0;
        loop {
            let top = level + 1 == self.branches.len();
            let node = &self.branches[level];
            if top && node.elements.len() == 1 {
                let [_, lo, hi] = node.elements[0];
                return BucketRoot::Page(u64::from(lo) | (u64::from(hi) << 32));
            }
            self.close_branch(pages, level);
            level += 1;
        }
    }
}

impl Default for TreeWriter {
    fn default() -> Self {
        Self::new()
    }
}

/// The two meta pages that open the file: root bucket at page `root`, `pages` pages in all.
/// Both describe the same tree (they differ only in their transaction id), so a reader that
/// falls back to the older one reads the same data.
pub fn meta_pages(page_size: usize, root: u64, pages: u64) -> Vec<u8> {
    let mut out = vec![0u8; 2 * page_size];
    for (id, txid) in [(0u64, 2u64), (1, 1)] {
        let page = &mut out[id as usize * page_size..];
        page[..8].copy_from_slice(&id.to_le_bytes());
        page[8..10].copy_from_slice(&META_PAGE.to_le_bytes());
        let meta = &mut page[PAGE_HEADER_BYTES..PAGE_HEADER_BYTES + META_BYTES];
        meta[0..4].copy_from_slice(&MAGIC.to_le_bytes());
        meta[4..8].copy_from_slice(&VERSION.to_le_bytes());
        meta[8..12].copy_from_slice(&(page_size as u32).to_le_bytes());
        // flags (12..16) and the root bucket's sequence (24..32) stay zero.
        meta[16..24].copy_from_slice(&root.to_le_bytes());
        meta[32..40].copy_from_slice(&NO_FREELIST.to_le_bytes());
        meta[40..48].copy_from_slice(&pages.to_le_bytes());
        meta[48..56].copy_from_slice(&txid.to_le_bytes());
        let sum = fnv64a(&meta[..META_CHECKSUM_AT]);
        meta[META_CHECKSUM_AT..].copy_from_slice(&sum.to_le_bytes());
    }
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::super::bbolt::{Bolt, BoltError, Bucket, Entry};
    use super::*;

    pub(crate) type Records = BTreeMap<Vec<u8>, Vec<u8>>;

    /// Lay out and write a file of `buckets` (sorted by name, as a BTreeMap is), as the etcd
    /// writer does: a counting pass, then the real one.
    fn write_file(buckets: &BTreeMap<Vec<u8>, Records>, page_size: usize) -> Vec<u8> {
        let pass = |mut pages: Pages| {
            let mut root = TreeWriter::of_buckets();
            for (name, records) in buckets {
                let mut tree = TreeWriter::new();
                for (k, v) in records {
                    tree.add(&mut pages, PLAIN, k, v).unwrap();
                }
                let value = tree.finish(&mut pages).entry_value();
                root.add(&mut pages, NESTED_BUCKET, name, &value).unwrap();
            }
            let BucketRoot::Page(id) = root.finish(&mut pages) else {
                panic!("the root bucket is in pages")
            };
            (id, pages)
        };
        let (root, counted) = pass(Pages::counting(page_size));
        let mut writing = Pages::writing(page_size);
        writing.put_meta(&meta_pages(page_size, root, counted.next_id()));
        let (root_again, mut written) = pass(writing);
        assert_eq!(root, root_again);
        assert_eq!(written.next_id(), counted.next_id());
        let file = written.take();
        assert_eq!(file.len() as u64, counted.next_id() * page_size as u64);
        file
    }

    /// Every bucket of a bbolt file (no hash trailer) with its records, as our reader reads them.
    pub(crate) fn read_back(file: &[u8]) -> BTreeMap<Vec<u8>, Records> {
        let bolt = Bolt::open(file, file.len() as u64).expect("open");
        let mut names = Vec::new();
        bolt.walk(&bolt.root(), &mut |e: Entry<'_>| {
            assert!(e.is_bucket);
            names.push(e.key.to_vec());
            Ok::<_, BoltError>(true)
        })
        .unwrap();
        let mut out = BTreeMap::new();
        for name in names {
            let bucket = bolt.bucket(&bolt.root(), &name).unwrap().unwrap();
            let mut records = Records::new();
            bolt.walk(&bucket, &mut |e: Entry<'_>| {
                assert!(!e.is_bucket);
                records.insert(e.key.to_vec(), e.value.to_vec());
                Ok::<_, BoltError>(true)
            })
            .unwrap();
            out.insert(name, records);
        }
        out
    }

    fn u16_at(b: &[u8], at: usize) -> u16 {
        u16::from_le_bytes(b[at..at + 2].try_into().unwrap())
    }
    fn u32_at(b: &[u8], at: usize) -> u32 {
        u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
    }
    fn u64_at(b: &[u8], at: usize) -> u64 {
        u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
    }

    /// What bbolt's `tx.Check` (run by `etcdctl snapshot status`) demands of a file without a
    /// freelist: every page after the metas is reached exactly once from the root (overflow pages
    /// with their page). Returns the depth of each paged bucket's tree by name.
    fn check_every_page_reached_once(file: &[u8], ps: usize) -> BTreeMap<Vec<u8>, usize> {
        let pages = file.len() / ps;
        let mut reached = vec![0u32; pages];
        reached[0] = 1;
        reached[1] = 1;
        fn visit(file: &[u8], ps: usize, id: u64, reached: &mut [u32], depth: usize) -> usize {
            let at = id as usize * ps;
            assert_eq!(u64_at(file, at), id, "page {id} names itself");
            let overflow = u32_at(file, at + 12) as usize;
            for n in reached.iter_mut().skip(id as usize).take(overflow + 1) {
                *n += 1;
            }
            let (flags, count) = (u16_at(file, at + 8), u16_at(file, at + 10) as usize);
            if flags == LEAF_PAGE {
                return depth;
            }
            assert_eq!(flags, BRANCH_PAGE);
            let mut depths = Vec::new();
            for i in 0..count {
                let child = u64_at(file, at + PAGE_HEADER_BYTES + i * ELEMENT_BYTES + 8);
                depths.push(visit(file, ps, child, reached, depth + 1));
            }
            assert!(depths.windows(2).all(|w| w[0] == w[1]), "a balanced tree");
            depths[0]
        }
        let root = u64_at(file, PAGE_HEADER_BYTES + 16);
        let bolt = Bolt::open(file, file.len() as u64).unwrap();
        let mut buckets = Vec::new();
        bolt.walk(&bolt.root(), &mut |e: Entry<'_>| {
            buckets.push((e.key.to_vec(), Bucket::from_value(e.value)?));
            Ok::<_, BoltError>(true)
        })
        .unwrap();
        visit(file, ps, root, &mut reached, 1);
        let mut depths = BTreeMap::new();
        for (name, bucket) in buckets {
            if let Bucket::Pages(id) = bucket {
                depths.insert(name, visit(file, ps, id, &mut reached, 1));
            }
        }
        for (id, n) in reached.iter().enumerate() {
            assert_eq!(*n, 1, "page {id} is reached {n} times");
        }
        depths
    }

    fn records(n: usize, key: impl Fn(usize) -> Vec<u8>, value_bytes: usize) -> Records {
        (0..n)
            .map(|i| (key(i), vec![i as u8; value_bytes]))
            .collect()
    }

    #[test]
    fn many_keys_make_branch_pages_several_levels_deep() {
        let ps = 512;
        let mut buckets = BTreeMap::new();
        // 512-byte pages hold about 12 records of 24 bytes and branch over about 15 children.
        let many = records(40_000, |i| format!("{i:017}").into_bytes(), 8);
        buckets.insert(b"key".to_vec(), many);
        buckets.insert(b"empty".to_vec(), Records::new());
        buckets.insert(b"small".to_vec(), records(3, |i| vec![b'k', i as u8], 4));
        let file = write_file(&buckets, ps);
        assert_eq!(read_back(&file), buckets);
        let depths = check_every_page_reached_once(&file, ps);
        assert!(depths[b"key".as_slice()] >= 4, "{depths:?}");
        assert!(
            !depths.contains_key(b"small".as_slice()),
            "small buckets are inline"
        );
        assert!(
            !depths.contains_key(b"empty".as_slice()),
            "and empty ones too"
        );
    }

    #[test]
    fn values_larger_than_a_page_get_overflow_pages() {
        let ps = 4096;
        let mut buckets = BTreeMap::new();
        let mut big = Records::new();
        big.insert(b"a".to_vec(), vec![1; 10]);
        big.insert(b"b".to_vec(), vec![2; 3 * ps + 1]);
        big.insert(b"c".to_vec(), vec![3; 10]);
        big.insert(
            b"d".to_vec(),
            vec![4; ps - PAGE_HEADER_BYTES - ELEMENT_BYTES - 1],
        );
        buckets.insert(b"big".to_vec(), big);
        let file = write_file(&buckets, ps);
        assert_eq!(read_back(&file), buckets);
        check_every_page_reached_once(&file, ps);
        // Page 2 holds `a`, then `b` alone spans four pages (three of them overflow).
        assert_eq!(u16_at(&file, 2 * ps + 10), 1);
        assert_eq!(u32_at(&file, 3 * ps + 12), 3);
        assert_eq!(u16_at(&file, 3 * ps + 10), 1);
        assert_eq!(u64_at(&file, 7 * ps), 7, "the page after the overflow");
    }

    #[test]
    fn keys_out_of_order_or_empty_are_refused() {
        let mut pages = Pages::counting(4096);
        let mut tree = TreeWriter::new();
        tree.add(&mut pages, PLAIN, b"b", b"").unwrap();
        assert!(tree.add(&mut pages, PLAIN, b"a", b"").is_err());
        assert!(tree.add(&mut pages, PLAIN, b"b", b"").is_err());
        assert!(tree.add(&mut pages, PLAIN, b"", b"").is_err());
        tree.add(&mut pages, PLAIN, b"c", b"").unwrap();
    }

    #[test]
    fn the_meta_pages_are_valid_and_agree() {
        let file = write_file(&BTreeMap::new(), 4096);
        // Meta, meta, the root bucket's empty leaf.
        assert_eq!(file.len(), 3 * 4096);
        let bolt = Bolt::open(&file[..], file.len() as u64).unwrap();
        assert_eq!(bolt.txid(), 2);
        let mut older = file.clone();
        older[PAGE_HEADER_BYTES] ^= 1; // meta 0 broken: meta 1 (txid 1) describes the same tree
        let bolt = Bolt::open(&older[..], older.len() as u64).unwrap();
        assert_eq!(bolt.txid(), 1);
        assert_eq!(u64_at(&file, PAGE_HEADER_BYTES + 32), NO_FREELIST);
    }

    fn arb_buckets() -> impl Strategy<Value = BTreeMap<Vec<u8>, Records>> {
        let value = prop_oneof![
            8 => prop::collection::vec(any::<u8>(), 0..40),
            1 => prop::collection::vec(any::<u8>(), 400..3000),
        ];
        let records =
            prop::collection::btree_map(prop::collection::vec(any::<u8>(), 1..40), value, 0..400);
        prop::collection::btree_map(prop::collection::vec(any::<u8>(), 1..12), records, 0..5)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Whatever the records, our reader gives back exactly what the writer was given, and
        /// every page is reached once.
        #[test]
        fn written_records_read_back_exactly(buckets in arb_buckets()) {
            let file = write_file(&buckets, 512);
            prop_assert_eq!(read_back(&file), buckets);
            check_every_page_reached_once(&file, 512);
        }
    }
}
