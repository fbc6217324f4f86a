//! How a model file's bytes reach memory: memory-mapped, read-only, advised for huge pages.
//!
//! Decode reads every weight byte once per token, so the weights stream through the TLB as
//! well as the caches: in 4 KiB pages that is a page walk every 4 KiB. `MADV_HUGEPAGE` on the
//! mapping lets the kernel (Linux 6.x with large folios in the page cache, e.g. ext4, xfs)
//! read a file that is not cached yet into 2 MiB folios and map them whole, and the folios stay
//! in the page cache for the next run. A file already cached in small folios stays as it is
//! (the advice costs nothing then). Measured on this project's benchmark machine (Linux 6.18,
//! ext4): a 0.8B Q8_0 file read cold through such a mapping ends up 98 % mapped in 2 MiB pages
//! (`FilePmdMapped` in `/proc/PID/smaps_rollup`); a file still cached from the writes that
//! created it (a fresh `llama-quantize` output, a fresh download) is 0 % until the kernel
//! drops it from the page cache.
//!
//! Copying the file into anonymous huge pages instead was tried and rejected: it gives huge
//! pages whatever the page cache holds, but allocating 2 MiB pages on a host whose memory is
//! fragmented stalls in compaction (14 s to load 4.4 GB once, against 0.15 s mapped).

use std::fs::File;
use std::io;
use std::sync::Arc;

use memmap2::Mmap;
use qinfer_tensor::ByteOwner;

/// The whole of `file`, mapped read-only and advised for huge pages.
pub(crate) fn file_bytes(file: &File) -> io::Result<Arc<dyn ByteOwner>> {
    // SAFETY: the map is read-only. If another process truncates or rewrites the file while it
    // is mapped, reads may fault or see new bytes; every engine that maps weights shares this
    // caveat, and model files are not modified in place in practice.
    let map = unsafe { Mmap::map(file) }?;
    // Only advice: a kernel without transparent huge pages refuses it and maps small pages.
    #[cfg(target_os = "linux")]
    let _ = map.advise(memmap2::Advice::HugePage);
    Ok(Arc::new(map))
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use std::io::Write;

    /// The mapping is advised for huge pages: `/proc/self/smaps` shows `hg` among its
    /// `VmFlags` (on any kernel built with transparent huge pages, whatever their setting).
    #[test]
    fn the_mapping_is_advised_for_huge_pages() {
        if !std::path::Path::new("/sys/kernel/mm/transparent_hugepage").exists() {
            return; // A kernel without transparent huge pages: no advice to check.
        }
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(&vec![7u8; 3 << 20]).unwrap();
        let bytes = super::file_bytes(f.as_file()).unwrap();
        let start = (*bytes).as_ref().as_ptr() as usize;
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let mut lines = smaps.lines();
        let header = format!("{start:x}-");
        assert!(
            lines.any(|l| l.starts_with(&header)),
            "no mapping starts at {start:x}"
        );
        let flags = lines
            .find(|l| l.starts_with("VmFlags:"))
            .expect("the mapping has VmFlags");
        assert!(
            flags.split_whitespace().any(|f| f == "hg"),
            "mapping not advised for huge pages: {flags}"
        );
    }
}
