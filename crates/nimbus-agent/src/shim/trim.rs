//! Keeping the shim small: after a workload starts, the shim gives back
//! the clean pages of its code and read-only data that only startup used.
//!
//! Only mappings that are file-backed, not writable and hold no private
//! (copy-on-write) pages are dropped, so every dropped page can be read
//! back from the file if it is needed again: this changes memory use, never
//! behaviour. One shim runs per instance, so its resident size is the
//! per-instance overhead the host pays.

use std::fs;

struct Mapping {
    start: usize,
    end: usize,
    droppable: bool,
}

fn parse_smaps(text: &str) -> Vec<Mapping> {
    let mut maps: Vec<Mapping> = Vec::new();
    for line in text.lines() {
        let mut fields = line.split_whitespace();
        let first = fields.next().unwrap_or_default();
        if let Some((start, end)) = first.split_once('-') {
            if let (Ok(start), Ok(end)) = (
                usize::from_str_radix(start, 16),
                usize::from_str_radix(end, 16),
            ) {
                let perms = fields.next().unwrap_or_default();
                let path = fields.nth(3).unwrap_or_default();
                let file_backed = path.starts_with('/');
                maps.push(Mapping {
                    start,
                    end,
                    droppable: file_backed && perms.starts_with('r') && !perms.contains('w'),
                });
                continue;
            }
        }
        if let Some(rest) = line.strip_prefix("Anonymous:") {
            let kb: u64 = rest
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse()
                .unwrap_or(1);
            if let Some(m) = maps.last_mut() {
                if kb != 0 {
                    m.droppable = false;
                }
            }
        }
    }
    maps
}

/// One malloc arena for the whole shim. glibc gives each new thread its own
/// arena (64 MiB of address space, some of it resident and never given back);
/// a shim's helper threads (short-lived, joined at once) allocate little,
/// and sharing the main arena costs it nothing measurable.
pub fn limit_malloc_arenas() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only changes allocator tuning; called before any
    // thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

/// Drop clean file-backed pages from the resident set, and give freed heap
/// back to the system. Returns the bytes of address space advised.
pub fn trim_working_set() -> usize {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only releases free memory held by the allocator.
    unsafe {
        libc::malloc_trim(0);
    }
    let Ok(text) = fs::read_to_string("/proc/self/smaps") else {
        return 0;
    };
    let mut advised = 0;
    for m in parse_smaps(&text).into_iter().filter(|m| m.droppable) {
        let len = m.end - m.start;
        // SAFETY: the range is one of our own mappings, read-only, file-backed
        // and without private pages, so MADV_DONTNEED only drops page-table
        // entries that the kernel refills from the file on the next access.
        let rc = unsafe {
            // Random access: later faults map single pages, not read-ahead windows.
            libc::madvise(m.start as *mut libc::c_void, len, libc::MADV_RANDOM);
            libc::madvise(m.start as *mut libc::c_void, len, libc::MADV_DONTNEED)
        };
        if rc == 0 {
            advised += len;
        }
    }
    advised
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_clean_read_only_file_mappings_are_dropped() {
        let smaps = "\
5629e082d000-5629e1688000 r-xp 0044b000 fe:00 984597 /usr/bin/nimbus
Rss:                4028 kB
Anonymous:             0 kB
5629e1688000-5629e1721000 r--p 012a5000 fe:00 984597 /usr/bin/nimbus
Rss:                 612 kB
Anonymous:           612 kB
5629e1721000-5629e172b000 rw-p 0133d000 fe:00 984597 /usr/bin/nimbus
Anonymous:            40 kB
562a20d78000-562a20dba000 rw-p 00000000 00:00 0 [heap]
Anonymous:           244 kB
7fcff6e43000-7fcff6e45000 r-xp 00000000 00:00 0 [vdso]
Anonymous:             0 kB
";
        let maps = parse_smaps(smaps);
        let dropped: Vec<bool> = maps.iter().map(|m| m.droppable).collect();
        assert_eq!(dropped, vec![true, false, false, false, false]);
    }

    #[test]
    fn trimming_keeps_the_process_working() {
        let before = std::hint::black_box(vec![1u8; 4096]);
        trim_working_set();
        // Code and data still work after their clean pages were dropped.
        assert_eq!(before.iter().map(|b| *b as usize).sum::<usize>(), 4096);
        assert!(format!("{:?}", std::time::Instant::now()).contains("Instant"));
    }
}
