//! `console.log`: the workload's output (stdout and stderr, or a serial console),
//! one timestamped line per line.
//!
//! Format: `<RFC 3339 UTC timestamp with nanoseconds> <stdout|stderr> <text>\n`.
//! The live file is `console.log`; when it grows past `log_max_bytes` it becomes
//! `console.log.1` (older ones shift up) and at most `log_files` files are kept,
//! counting the live one, as Docker's `max-file` does.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use super::ShimError;

/// File name of the live console log inside an instance directory.
pub const CONSOLE_LOG: &str = "console.log";

/// Lines longer than this are split so a process that never prints a newline
/// cannot make the shim buffer without bound.
pub const MAX_LINE_BYTES: usize = 16 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    fn label(self) -> &'static [u8] {
        match self {
            Stream::Stdout => b"stdout",
            Stream::Stderr => b"stderr",
        }
    }
}

/// The rotating console log of one instance.
pub struct ConsoleLog {
    path: PathBuf,
    file: File,
    size: u64,
    max_bytes: u64,
    files: u32,
    line: Vec<u8>,
}

impl ConsoleLog {
    /// Opens (appending to) `<dir>/console.log`.
    pub fn open(dir: &Path, max_bytes: u64, files: u32) -> Result<ConsoleLog, ShimError> {
        let path = dir.join(CONSOLE_LOG);
        let file = open_append(&path)?;
        let size = file.metadata().map(|m| m.len()).unwrap_or(0);
        Ok(ConsoleLog {
            path,
            file,
            size,
            max_bytes: max_bytes.max(1024),
            files: files.max(1),
            line: Vec::with_capacity(256),
        })
    }

    /// Appends one line (without its newline). Write errors are dropped: a full disk
    /// must not stop the shim from supervising the workload.
    pub fn write_line(&mut self, stream: Stream, text: &[u8]) {
        self.line.clear();
        self.line
            .extend_from_slice(&rfc3339_nanos(std::time::SystemTime::now()));
        self.line.push(b' ');
        self.line.extend_from_slice(stream.label());
        self.line.push(b' ');
        self.line.extend_from_slice(text);
        self.line.push(b'\n');
        if self.size > 0 && self.size + self.line.len() as u64 > self.max_bytes {
            self.rotate();
        }
        if self.file.write_all(&self.line).is_ok() {
            self.size += self.line.len() as u64;
        }
        if self.line.capacity() > 4 * MAX_LINE_BYTES {
            self.line = Vec::with_capacity(256);
        }
    }

    fn rotate(&mut self) {
        let numbered = |n: u32| {
            let mut p = self.path.as_os_str().to_owned();
            p.push(format!(".{n}"));
            PathBuf::from(p)
        };
        if self.files <= 1 {
            let _ = self.file.set_len(0);
            self.size = 0;
            return;
        }
        let oldest = self.files - 1;
        let _ = std::fs::remove_file(numbered(oldest));
        for n in (1..oldest).rev() {
            let _ = std::fs::rename(numbered(n), numbered(n + 1));
        }
        let _ = std::fs::rename(&self.path, numbered(1));
        if let Ok(file) = open_append(&self.path) {
            self.file = file;
            self.size = 0;
        }
    }
}

/// `2026-12-02T03:04:05.123456789Z`: the UTC time in RFC 3339 with
/// nanoseconds, as chrono's `to_rfc3339_opts(SecondsFormat::Nanos, true)`
/// writes it (the tests compare the two). Written out here because it runs
/// for every line a workload prints: chrono's formatter goes through
/// `core::fmt` and spreads over many pages of code, which a shim that
/// trimmed its memory would fault back in at each line.
fn rfc3339_nanos(now: std::time::SystemTime) -> [u8; 30] {
    let since = now
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = since.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Days to a civil date (proleptic Gregorian), after H. Hinnant's
    // days_from_civil inverse, for days since 1970-01-01.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let mut out = *b"0000-00-00T00:00:00.000000000Z";
    let mut put = |at: usize, width: usize, mut value: u64| {
        for i in (at..at + width).rev() {
            out[i] = b'0' + (value % 10) as u8;
            value /= 10;
        }
    };
    put(0, 4, year.clamp(0, 9999) as u64);
    put(5, 2, month as u64);
    put(8, 2, day as u64);
    put(11, 2, rem / 3_600);
    put(14, 2, rem % 3_600 / 60);
    put(17, 2, rem % 60);
    put(20, 9, u64::from(since.subsec_nanos()));
    out
}

fn open_append(path: &Path) -> Result<File, ShimError> {
    // Workload output is the tenant's: root only.
    std::os::unix::fs::OpenOptionsExt::mode(OpenOptions::new().create(true).append(true), 0o600)
        .open(path)
        .map_err(|source| ShimError::Io {
            what: format!("open console log {}", path.display()),
            source,
        })
}

/// Cuts a byte stream into lines, keeping the unfinished tail between reads.
#[derive(Default)]
pub struct LineSplitter {
    partial: Vec<u8>,
}

impl LineSplitter {
    /// Feeds bytes and calls `emit` for every complete (or over-long) line.
    pub fn feed(&mut self, mut bytes: &[u8], mut emit: impl FnMut(&[u8])) {
        while let Some(pos) = bytes.iter().position(|&b| b == b'\n') {
            let (head, rest) = bytes.split_at(pos);
            if self.partial.is_empty() {
                for chunk in head.chunks(MAX_LINE_BYTES) {
                    emit(chunk);
                }
                if head.is_empty() {
                    emit(head);
                }
            } else {
                self.partial.extend_from_slice(head);
                self.emit_partial(&mut emit);
            }
            bytes = &rest[1..];
        }
        self.partial.extend_from_slice(bytes);
        while self.partial.len() >= MAX_LINE_BYTES {
            emit(&self.partial[..MAX_LINE_BYTES]);
            self.partial.drain(..MAX_LINE_BYTES);
        }
    }

    /// Emits what is left when the stream ends without a final newline.
    pub fn finish(&mut self, mut emit: impl FnMut(&[u8])) {
        if !self.partial.is_empty() {
            self.emit_partial(&mut emit);
        }
    }

    fn emit_partial(&mut self, emit: &mut impl FnMut(&[u8])) {
        for chunk in self.partial.chunks(MAX_LINE_BYTES) {
            emit(chunk);
        }
        self.partial.clear();
        if self.partial.capacity() > 2 * MAX_LINE_BYTES {
            self.partial = Vec::new();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(input: &[&[u8]]) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let mut s = LineSplitter::default();
        for chunk in input {
            s.feed(chunk, |l| out.push(l.to_vec()));
        }
        s.finish(|l| out.push(l.to_vec()));
        out
    }

    #[test]
    fn timestamps_match_chrono_rfc3339_with_nanoseconds() {
        use chrono::{SecondsFormat, TimeZone, Utc};
        let cases: [(i64, u32); 9] = [
            (0, 0),
            (951_782_400, 1),             // 2000-02-29
            (1_709_164_799, 999_999_999), // 2024-02-28T23:59:59
            (1_709_251_200, 5),           // 2024-03-01
            (1_735_689_599, 123_456_789), // 2024-12-31T23:59:59
            (1_796_180_000, 42),
            (4_102_444_800, 0),   // 2100-01-01
            (253_402_300_799, 7), // 9999-12-31T23:59:59
            (68_169_600, 900),    // 1972-02-29
        ];
        for (secs, nanos) in cases {
            let at = std::time::UNIX_EPOCH + std::time::Duration::new(secs as u64, nanos);
            let want = Utc
                .timestamp_opt(secs, nanos)
                .single()
                .expect("valid")
                .to_rfc3339_opts(SecondsFormat::Nanos, true);
            assert_eq!(String::from_utf8_lossy(&rfc3339_nanos(at)), want);
        }
        // Every day over four centuries lands on chrono's date.
        for day in (0..146_097 * 4).step_by(13) {
            let secs = day * 86_400 + 45_296;
            let at = std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs as u64);
            let want = Utc
                .timestamp_opt(secs, 0)
                .single()
                .expect("valid")
                .to_rfc3339_opts(SecondsFormat::Nanos, true);
            assert_eq!(
                String::from_utf8_lossy(&rfc3339_nanos(at)),
                want,
                "day {day}"
            );
        }
    }

    #[test]
    fn splits_lines_across_reads() {
        let got = lines(&[b"a\nb", b"c\n\nd"]);
        assert_eq!(
            got,
            vec![b"a".to_vec(), b"bc".to_vec(), vec![], b"d".to_vec()]
        );
    }

    #[test]
    fn splits_overlong_lines() {
        let long = vec![b'x'; MAX_LINE_BYTES * 2 + 5];
        let got = lines(&[&long]);
        assert_eq!(got.len(), 3);
        assert_eq!(got[2].len(), 5);
    }

    #[test]
    fn rotates_and_keeps_file_count() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut log = ConsoleLog::open(dir.path(), 1024, 3).expect("open log");
        for i in 0..200 {
            log.write_line(Stream::Stdout, format!("line {i}").as_bytes());
        }
        assert!(dir.path().join("console.log").exists());
        assert!(dir.path().join("console.log.1").exists());
        assert!(dir.path().join("console.log.2").exists());
        assert!(!dir.path().join("console.log.3").exists());
        let live = std::fs::read_to_string(dir.path().join("console.log")).expect("read log");
        assert!(live.len() <= 1024);
        assert!(live.ends_with(" stdout line 199\n"), "{live}");
    }
}
