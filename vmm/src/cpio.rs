//! A writer for `newc` cpio archives, the format of a Linux initramfs. The kernel unpacks
//! several archives laid back to back, so the VMM appends the user's files (`--add`,
//! `--exec`) to the image's initramfs as a second archive.

/// Builds one archive in memory.
#[derive(Default)]
pub struct CpioWriter {
    buf: Vec<u8>,
    ino: u32,
}

/// Mode bits of a directory.
pub const S_IFDIR: u32 = 0o040000;
/// Mode bits of a regular file.
pub const S_IFREG: u32 = 0o100000;
/// Mode bits of a character device.
pub const S_IFCHR: u32 = 0o020000;
/// Mode bits of a symbolic link.
pub const S_IFLNK: u32 = 0o120000;

impl CpioWriter {
    /// An empty archive.
    pub fn new() -> Self {
        CpioWriter {
            buf: Vec::new(),
            ino: 1000,
        }
    }

    fn pad4(&mut self) {
        while !self.buf.len().is_multiple_of(4) {
            self.buf.push(0);
        }
    }

    fn entry(&mut self, name: &str, mode: u32, data: &[u8]) {
        self.entry_dev(name, mode, data, (0, 0));
    }

    fn entry_dev(&mut self, name: &str, mode: u32, data: &[u8], rdev: (u32, u32)) {
        self.ino += 1;
        let name = name.trim_start_matches('/');
        let namesize = name.len() + 1;
        let fields = [
            self.ino,
            mode,
            0,
            0,
            1,
            0,
            u32::try_from(data.len()).unwrap_or(u32::MAX),
            0,
            0,
            rdev.0,
            rdev.1,
            u32::try_from(namesize).unwrap_or(u32::MAX),
            0,
        ];
        self.buf.extend_from_slice(b"070701");
        for f in fields {
            self.buf.extend_from_slice(format!("{f:08x}").as_bytes());
        }
        self.buf.extend_from_slice(name.as_bytes());
        self.buf.push(0);
        self.pad4();
        self.buf.extend_from_slice(data);
        self.pad4();
    }

    /// Adds a directory.
    pub fn dir(&mut self, name: &str) {
        self.entry(name, S_IFDIR | 0o755, &[]);
    }

    /// Adds every missing parent directory of `path` (cpio needs them before the file).
    pub fn parents(&mut self, path: &str) {
        let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
        for i in 1..parts.len() {
            self.dir(&parts[..i].join("/"));
        }
    }

    /// Adds a regular file with permission bits `perm`.
    pub fn file(&mut self, name: &str, perm: u32, data: &[u8]) {
        self.entry(name, S_IFREG | (perm & 0o7777), data);
    }

    /// Adds a character device node.
    pub fn chardev(&mut self, name: &str, perm: u32, major: u32, minor: u32) {
        self.entry_dev(name, S_IFCHR | (perm & 0o7777), &[], (major, minor));
    }

    /// Adds a symbolic link.
    pub fn symlink(&mut self, name: &str, target: &str) {
        self.entry(name, S_IFLNK | 0o777, target.as_bytes());
    }

    /// Closes the archive and returns its bytes.
    pub fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, &[]);
        // Pad to 512 bytes like cpio(1) does, so archives concatenate cleanly.
        while !self.buf.len().is_multiple_of(512) {
            self.buf.push(0);
        }
        self.buf
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(entry: &[u8], i: usize) -> u32 {
        let s = std::str::from_utf8(&entry[6 + 8 * i..14 + 8 * i]).expect("ascii");
        u32::from_str_radix(s, 16).expect("hex")
    }

    #[test]
    fn writes_newc_headers_and_alignment() {
        let mut w = CpioWriter::new();
        w.parents("etc/owvmm/exec");
        w.file("/etc/owvmm/exec", 0o644, b"echo hi\n");
        let out = w.finish();
        assert_eq!(out.len() % 512, 0);
        assert!(out.starts_with(b"070701"));
        assert_eq!(field(&out, 1), S_IFDIR | 0o755);
        // First entry name: "etc".
        assert_eq!(&out[110..113], b"etc");
        let pos = out
            .windows(14)
            .position(|w| w == b"etc/owvmm/exec")
            .expect("file entry");
        let hdr = &out[pos - 110..];
        assert_eq!(field(hdr, 1), S_IFREG | 0o644);
        assert_eq!(field(hdr, 6), 8);
        assert!(out.windows(10).any(|w| w == b"TRAILER!!!"));
    }

    #[test]
    fn can_be_read_by_cpio_tool_if_present() {
        // Cross-check with the real cpio(1) when the host has it.
        if std::process::Command::new("cpio")
            .arg("--version")
            .output()
            .is_err()
        {
            return;
        }
        let mut w = CpioWriter::new();
        w.dir("d");
        w.file("d/f", 0o600, b"data");
        w.symlink("d/l", "f");
        let out = w.finish();
        let mut child = std::process::Command::new("cpio")
            .args(["-t", "--quiet"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("spawn cpio");
        {
            use std::io::Write;
            let mut stdin = child.stdin.take().expect("stdin");
            stdin.write_all(&out).expect("feed");
        }
        let res = child.wait_with_output().expect("cpio");
        assert!(res.status.success());
        assert_eq!(String::from_utf8_lossy(&res.stdout), "d\nd/f\nd/l\n");
    }
}
