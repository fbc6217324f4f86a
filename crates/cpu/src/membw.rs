//! A measurement of the machine's memory read bandwidth with the engine's own threads: the
//! physical limit a memory-bound decode step is compared against (`qinfer bench`).

use std::time::Instant;

/// Streams a `bytes`-long buffer (large enough to leave the caches) with every pool thread
/// reading a disjoint part, `reps` times, and returns the best rate in GB/s (10⁹ bytes/s).
/// The buffer is written once first so its pages exist; what is timed is reading only. It
/// is advised for huge pages, as the weights' mapping is (`qinfer-formats`), so that the limit
/// is the memory's and not the TLB's.
pub fn read_bandwidth_gb_s(bytes: usize, reps: usize) -> f64 {
    let words = (bytes / 8).max(1 << 16);
    let (mut map, mut owned);
    let buf: &mut [u64] = match memmap2::MmapOptions::new().len(words * 8).map_anon() {
        Ok(m) => {
            map = m;
            // Only advice: without transparent huge pages the probe reads small pages.
            #[cfg(target_os = "linux")]
            let _ = map.advise(memmap2::Advice::HugePage);
            bytemuck::cast_slice_mut(&mut map[..])
        }
        Err(_) => {
            owned = vec![0u64; words];
            &mut owned
        }
    };
    for (i, w) in buf.iter_mut().enumerate() {
        *w = i as u64;
    }
    let buf: &[u64] = buf;
    let chunks = crate::threads() * 8;
    let per = words.div_ceil(chunks);
    let sink = std::sync::atomic::AtomicU64::new(0);
    let mut best = 0.0f64;
    for _ in 0..reps.max(1) {
        let t = Instant::now();
        crate::pool::parallel_for(chunks, &|c| {
            let part = &buf[(c * per).min(words)..((c + 1) * per).min(words)];
            // Eight independent sums so the loop is bound by loads, not by one add chain.
            let mut acc = [0u64; 8];
            for w in part.chunks_exact(8) {
                for (a, x) in acc.iter_mut().zip(w) {
                    *a = a.wrapping_add(*x);
                }
            }
            let s = acc.iter().fold(0u64, |x, y| x.wrapping_add(*y));
            sink.fetch_add(s, std::sync::atomic::Ordering::Relaxed);
        });
        let secs = t.elapsed().as_secs_f64();
        best = best.max((words * 8) as f64 / secs / 1e9);
    }
    std::hint::black_box(sink.into_inner());
    best
}

#[cfg(test)]
mod tests {
    /// The probe returns a finite positive rate (its value depends on the machine).
    #[test]
    fn bandwidth_probe_runs() {
        let g = super::read_bandwidth_gb_s(8 << 20, 2);
        assert!(g.is_finite() && g > 0.0, "{g}");
    }
}
