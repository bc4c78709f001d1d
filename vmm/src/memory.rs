//! Guest RAM: anonymous for a fresh boot, a private (copy-on-write) file mapping for a
//! restored snapshot.

use std::fs::File;

use vm_memory::mmap::MmapRegionBuilder;
use vm_memory::{FileOffset, GuestAddress, GuestMemoryMmap, GuestRegionMmap};

use crate::arch::layout::ram_ranges;

/// Errors while setting up guest memory.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// The host refused the mapping.
    #[error("cannot map {0} MiB of guest memory")]
    Map(u64, #[source] vm_memory::mmap::MmapRegionError),
    /// The regions do not form a valid layout.
    #[error("invalid guest memory layout")]
    Layout(#[source] vm_memory::GuestRegionCollectionError),
    /// A region's size does not fit the host's address space.
    #[error("guest memory of {0} bytes is too large for this host")]
    TooLarge(u64),
}

fn to_usize(n: u64) -> Result<usize, MemoryError> {
    usize::try_from(n).map_err(|_| MemoryError::TooLarge(n))
}

/// Fresh, zeroed guest memory of `size` bytes.
pub fn anonymous(size: u64) -> Result<GuestMemoryMmap, MemoryError> {
    let mut regions = Vec::new();
    for (start, len) in ram_ranges(size) {
        let r = MmapRegionBuilder::new(to_usize(len)?)
            .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
            .with_mmap_flags(libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE)
            .build()
            .map_err(|e| MemoryError::Map(size >> 20, e))?;
        regions.push(region(r, start)?);
    }
    GuestMemoryMmap::from_regions(regions).map_err(MemoryError::Layout)
}

fn region(r: vm_memory::MmapRegion, start: u64) -> Result<GuestRegionMmap, MemoryError> {
    let len = r.size() as u64;
    GuestRegionMmap::new(r, GuestAddress(start)).ok_or(MemoryError::TooLarge(start + len))
}

/// Guest memory backed by `file` (a snapshot's memory image, regions stored back to back),
/// mapped private: the guest's writes stay in this process and never reach the file.
pub fn from_file(file: &File, size: u64) -> Result<GuestMemoryMmap, MemoryError> {
    let mut regions = Vec::new();
    let mut offset = 0u64;
    for (start, len) in ram_ranges(size) {
        let fo = FileOffset::new(
            file.try_clone().map_err(|e| {
                MemoryError::Map(size >> 20, vm_memory::mmap::MmapRegionError::Mmap(e))
            })?,
            offset,
        );
        let r = MmapRegionBuilder::new(to_usize(len)?)
            .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
            .with_mmap_flags(libc::MAP_PRIVATE | libc::MAP_NORESERVE)
            .with_file_offset(fo)
            .build()
            .map_err(|e| MemoryError::Map(size >> 20, e))?;
        regions.push(region(r, start)?);
        offset += len;
    }
    GuestMemoryMmap::from_regions(regions).map_err(MemoryError::Layout)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use vm_memory::Bytes;

    #[test]
    fn private_file_mapping_does_not_write_back() {
        let path = std::env::temp_dir().join(format!("owvmm-mem-{}", std::process::id()));
        let mut f = File::create(&path).expect("create");
        f.write_all(&vec![0xabu8; 1 << 20]).expect("write");
        drop(f);
        let f = File::open(&path).expect("open");
        let mem = from_file(&f, 1 << 20).expect("map");
        let v: u8 = mem.read_obj(GuestAddress(4096)).expect("read");
        assert_eq!(v, 0xab);
        mem.write_obj(1u8, GuestAddress(4096)).expect("write");
        let v: u8 = mem.read_obj(GuestAddress(4096)).expect("read");
        assert_eq!(v, 1);
        let on_disk = std::fs::read(&path).expect("read file");
        assert_eq!(on_disk[4096], 0xab);
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn anonymous_memory_is_zeroed() {
        let mem = anonymous(2 << 20).expect("map");
        let v: u64 = mem.read_obj(GuestAddress(8)).expect("read");
        assert_eq!(v, 0);
    }
}
