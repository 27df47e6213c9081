//! Small filesystem helpers: atomic writes, owner-only folders, and opening only regular
//! files and folders ([`open_regular`], [`open_dir`], [`check_kind`]).

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Create a folder (and its parents) with mode 0700 for the ones created here.
pub fn create_private_dir_all(dir: &Path) -> io::Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

/// Write `bytes` to `path` atomically: a temp file in the same folder, fsync, rename,
/// fsync of the folder. The file ends with `mode` unless it existed, in which case its
/// permissions are kept.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    write_atomic_with(path, mode, |w| w.write_all(bytes))
}

/// [`write_atomic`], the content written by `write` (buffered) instead of held in memory
/// whole: a large manifest streams to its file.
pub fn write_atomic_with(
    path: &Path,
    mode: u32,
    write: impl FnOnce(&mut dyn Write) -> io::Result<()>,
) -> io::Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mode = fs::metadata(path)
        .map(|m| m.permissions().mode() & 0o7777)
        .unwrap_or(mode);
    let tmp = dir.join(format!(
        ".{name}.tmp-{}-{}",
        std::process::id(),
        uuid::Uuid::new_v4().simple()
    ));
    let result = (|| {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        let mut w = io::BufWriter::with_capacity(1 << 20, &mut f);
        write(&mut w)?;
        w.flush()?;
        drop(w);
        f.set_permissions(fs::Permissions::from_mode(mode))?;
        f.sync_all()?;
        drop(f);
        fs::rename(&tmp, path)?;
        if let Ok(d) = fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Remove the temporary files that [`write_atomic`] of `path` left behind in processes
/// that no longer run (killed between creating and renaming them). Files of a live
/// process are left alone. Returns how many were removed.
pub fn remove_stale_temps(path: &Path) -> usize {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return 0;
    };
    let prefix = format!(".{}.tmp-", name.to_string_lossy());
    let Ok(rd) = fs::read_dir(dir) else { return 0 };
    let mut removed = 0;
    for e in rd.flatten() {
        let n = e.file_name();
        let Some(rest) = n.to_str().and_then(|n| n.strip_prefix(&prefix)) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<i32>().ok()) else {
            continue;
        };
        if process_gone(pid) && fs::remove_file(e.path()).is_ok() {
            removed += 1;
        }
    }
    removed
}

/// Whether no process `pid` runs any more.
pub fn process_gone(pid: i32) -> bool {
    // SAFETY: kill with signal 0 only checks whether the process exists.
    let rc = unsafe { libc::kill(pid, 0) };
    rc != 0 && io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH)
}

/// What `statvfs` says of the filesystem holding `path`.
fn statvfs(path: &Path) -> io::Result<libc::statvfs> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let c = CString::new(path.as_os_str().as_bytes()).map_err(io::Error::other)?;
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid NUL-terminated path and `st` a valid out-pointer.
    let rc = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st)
}

/// Free bytes available to an unprivileged user on the filesystem holding `path`.
pub fn available_space(path: &Path) -> io::Result<u64> {
    let st = statvfs(path)?;
    Ok(st.f_bavail as u64 * st.f_frsize as u64)
}

/// The allocation unit of the filesystem holding `path` (statvfs `f_frsize`): every
/// file takes a whole number of them on disk.
pub fn block_size(path: &Path) -> io::Result<u64> {
    Ok(statvfs(path)?.f_frsize as u64)
}

/// `p` itself if it exists, else its nearest existing parent (`.` at worst): where a
/// folder that is not there yet would be created.
pub fn nearest_existing(p: &Path) -> std::path::PathBuf {
    let mut cur = p.to_path_buf();
    while !cur.exists() {
        match cur.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => cur = parent.to_path_buf(),
            _ => return std::path::PathBuf::from("."),
        }
    }
    cur
}

/// What [`lstat_at`] reports of a file: enough to notice that it was replaced or rewritten.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileStamp {
    pub is_symlink: bool,
    /// The device holding it: with `ino`, which file this is.
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
    pub mtime: (i64, i64),
    pub ctime: (i64, i64),
    pub mode: u32,
}

/// `lstat` of `rel` inside the open folder `dir` (`fstatat` with `AT_SYMLINK_NOFOLLOW`):
/// the kernel walks only `rel`, not the folder's whole path again, which halves the cost
/// of stat-ing every state file of a large store.
pub fn lstat_at(dir: &fs::File, rel: &Path) -> io::Result<FileStamp> {
    use std::ffi::CString;
    use std::os::fd::AsRawFd;
    use std::os::unix::ffi::OsStrExt;
    let c = CString::new(rel.as_os_str().as_bytes()).map_err(io::Error::other)?;
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `dir` is an open descriptor, `c` a valid NUL-terminated path and `st` a
    // valid out-pointer that fstatat fills.
    let rc = unsafe {
        libc::fstatat(
            dir.as_raw_fd(),
            c.as_ptr(),
            &mut st,
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(FileStamp {
        is_symlink: st.st_mode & libc::S_IFMT == libc::S_IFLNK,
        dev: st.st_dev,
        ino: st.st_ino,
        size: st.st_size as u64,
        mtime: (st.st_mtime, st.st_mtime_nsec),
        ctime: (st.st_ctime, st.st_ctime_nsec),
        mode: st.st_mode,
    })
}

/// An open folder, and the `*at` calls relative to it: every component below it is
/// opened with `O_NOFOLLOW`, so a symlink swapped in between a check and a write can
/// never redirect the write. The folder itself is opened by path (a link to it, such as
/// a sessions folder on a mounted volume, is followed once, when it is opened).
#[derive(Debug)]
pub struct Dir {
    fd: std::os::fd::OwnedFd,
    path: std::path::PathBuf,
}

/// `lstat` of one entry of a [`Dir`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    /// `st_mode & S_IFMT`.
    pub kind: u32,
    /// The permission bits.
    pub perm: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    /// The filesystem it is on.
    pub dev: u64,
}

impl Entry {
    pub fn is_symlink(&self) -> bool {
        self.kind == libc::S_IFLNK
    }
    pub fn is_dir(&self) -> bool {
        self.kind == libc::S_IFDIR
    }
    pub fn is_file(&self) -> bool {
        self.kind == libc::S_IFREG
    }
    /// What the entry is, in words ("a symlink", "a FIFO"...).
    pub fn kind_name(&self) -> &'static str {
        kind(self.kind)
    }
}

fn cstr(name: &std::ffi::OsStr) -> io::Result<std::ffi::CString> {
    use std::os::unix::ffi::OsStrExt;
    let b = name.as_bytes();
    if b.is_empty() || b.contains(&b'/') || b == b"." || b == b".." {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{name:?} is not one path component"),
        ));
    }
    std::ffi::CString::new(b).map_err(io::Error::other)
}

fn check(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

impl Dir {
    /// Open the folder at `path` (following a link to it).
    pub fn open(path: &Path) -> io::Result<Dir> {
        let f = fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC)
            .open(path)?;
        Ok(Dir {
            fd: f.into(),
            path: path.to_path_buf(),
        })
    }

    /// The path it was opened by, joined with the names it was entered by: for messages.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn raw(&self) -> std::os::fd::RawFd {
        use std::os::fd::AsRawFd;
        self.fd.as_raw_fd()
    }

    /// Open the subfolder `name`; a symlink there is refused by the kernel (`ELOOP`, or
    /// `ENOTDIR` for anything that is not a folder).
    pub fn open_dir(&self, name: &std::ffi::OsStr) -> io::Result<Dir> {
        Ok(Dir {
            fd: subfolder(self.raw(), name)?,
            path: self.path.join(name),
        })
    }

    /// `lstat` of `name` (never following it).
    pub fn lstat(&self, name: &std::ffi::OsStr) -> io::Result<Entry> {
        let c = cstr(name)?;
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: a valid descriptor, a NUL-terminated name and a valid out-pointer.
        check(unsafe {
            libc::fstatat(self.raw(), c.as_ptr(), &mut st, libc::AT_SYMLINK_NOFOLLOW)
        })?;
        Ok(entry_of(&st))
    }

    /// `fstat` of the folder itself.
    pub fn stat_self(&self) -> io::Result<Entry> {
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: a valid descriptor and a valid out-pointer.
        check(unsafe { libc::fstat(self.raw(), &mut st) })?;
        Ok(entry_of(&st))
    }

    /// The target of the symlink `name`, for messages.
    pub fn read_link(&self, name: &std::ffi::OsStr) -> io::Result<std::path::PathBuf> {
        use std::os::unix::ffi::OsStringExt;
        let c = cstr(name)?;
        let mut buf = vec![0u8; 4096];
        // SAFETY: a valid descriptor, a NUL-terminated name, and a buffer of that length.
        let n =
            unsafe { libc::readlinkat(self.raw(), c.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        buf.truncate(n as usize);
        Ok(std::ffi::OsString::from_vec(buf).into())
    }

    /// Create the subfolder `name` with `mode` (`EEXIST` when anything is there).
    pub fn mkdir(&self, name: &std::ffi::OsStr, mode: u32) -> io::Result<()> {
        let c = cstr(name)?;
        // SAFETY: a valid descriptor and a NUL-terminated name.
        check(unsafe { libc::mkdirat(self.raw(), c.as_ptr(), mode as libc::mode_t) })?;
        Ok(())
    }

    /// Create the file `name`, which must not exist (not even as a dangling link).
    pub fn create_new(&self, name: &std::ffi::OsStr, mode: u32) -> io::Result<fs::File> {
        use std::os::fd::FromRawFd;
        let c = cstr(name)?;
        // SAFETY: a valid descriptor and a NUL-terminated name; the result is a new fd.
        let fd = check(unsafe {
            libc::openat(
                self.raw(),
                c.as_ptr(),
                libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC,
                mode as libc::c_uint,
            )
        })?;
        // SAFETY: `fd` was just opened and is owned by nobody else.
        Ok(unsafe { fs::File::from_raw_fd(fd) })
    }

    /// Open `name` for reading; a symlink is refused (`ELOOP`), and a FIFO does not
    /// block the open (`O_NONBLOCK`): check [`Entry::is_file`] of the handle's metadata.
    pub fn open_read(&self, name: &std::ffi::OsStr) -> io::Result<fs::File> {
        use std::os::fd::FromRawFd;
        let c = cstr(name)?;
        // SAFETY: a valid descriptor and a NUL-terminated name; the result is a new fd.
        let fd = check(unsafe {
            libc::openat(
                self.raw(),
                c.as_ptr(),
                libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC,
            )
        })?;
        // SAFETY: `fd` was just opened and is owned by nobody else.
        let f = unsafe { fs::File::from_raw_fd(fd) };
        if !f.metadata()?.is_file() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a regular file",
            ));
        }
        Ok(f)
    }

    /// Rename `from` to `to`, both in this folder (atomic; replaces `to`, and a symlink
    /// at `to` is replaced itself, never followed).
    pub fn rename(&self, from: &std::ffi::OsStr, to: &std::ffi::OsStr) -> io::Result<()> {
        let (a, b) = (cstr(from)?, cstr(to)?);
        // SAFETY: valid descriptors and NUL-terminated names.
        check(unsafe { libc::renameat(self.raw(), a.as_ptr(), self.raw(), b.as_ptr()) })?;
        Ok(())
    }

    /// Remove the file `name`.
    pub fn unlink(&self, name: &std::ffi::OsStr) -> io::Result<()> {
        let c = cstr(name)?;
        // SAFETY: a valid descriptor and a NUL-terminated name.
        check(unsafe { libc::unlinkat(self.raw(), c.as_ptr(), 0) })?;
        Ok(())
    }

    /// Remove the empty subfolder `name`.
    pub fn rmdir(&self, name: &std::ffi::OsStr) -> io::Result<()> {
        let c = cstr(name)?;
        // SAFETY: a valid descriptor and a NUL-terminated name.
        check(unsafe { libc::unlinkat(self.raw(), c.as_ptr(), libc::AT_REMOVEDIR) })?;
        Ok(())
    }

    /// Give `name` (not followed) to `uid:gid`.
    pub fn chown(&self, name: &std::ffi::OsStr, uid: u32, gid: u32) -> io::Result<()> {
        let c = cstr(name)?;
        // SAFETY: a valid descriptor and a NUL-terminated name.
        check(unsafe {
            libc::fchownat(self.raw(), c.as_ptr(), uid, gid, libc::AT_SYMLINK_NOFOLLOW)
        })?;
        Ok(())
    }

    /// fsync the folder (its entries).
    pub fn sync(&self) -> io::Result<()> {
        // SAFETY: a valid descriptor.
        check(unsafe { libc::fsync(self.raw()) })?;
        Ok(())
    }

    /// Flush every file of the filesystem holding this folder (`syncfs`): one call in
    /// place of an fsync of each file written there.
    pub fn sync_filesystem(&self) -> io::Result<()> {
        // SAFETY: a valid descriptor.
        check(unsafe { libc::syncfs(self.raw()) })?;
        Ok(())
    }

    /// The names in the folder (without `.` and `..`), at most `limit` of them.
    pub fn names(&self, limit: usize) -> io::Result<Vec<std::ffi::OsString>> {
        use std::os::unix::ffi::OsStrExt;
        // SAFETY: dup of a valid descriptor; fdopendir takes the copy and closedir closes it.
        let fd = check(unsafe { libc::fcntl(self.raw(), libc::F_DUPFD_CLOEXEC, 0) })?;
        let d = unsafe { libc::fdopendir(fd) };
        if d.is_null() {
            let e = io::Error::last_os_error();
            unsafe { libc::close(fd) };
            return Err(e);
        }
        // Start from the beginning: the duplicate shares the offset of the original.
        unsafe { libc::rewinddir(d) };
        let mut out = Vec::new();
        while out.len() < limit {
            // SAFETY: `d` is an open directory stream; readdir returns NULL at the end.
            let ent = unsafe { libc::readdir(d) };
            if ent.is_null() {
                break;
            }
            // SAFETY: d_name is NUL-terminated within the entry readdir returned.
            let name = unsafe { std::ffi::CStr::from_ptr((*ent).d_name.as_ptr()) };
            let b = name.to_bytes();
            if b != b"." && b != b".." {
                out.push(std::ffi::OsStr::from_bytes(b).to_owned());
            }
        }
        // SAFETY: `d` is open; closing it closes `fd`.
        unsafe { libc::closedir(d) };
        Ok(out)
    }
}

impl std::os::fd::AsRawFd for Dir {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.raw()
    }
}

fn entry_of(st: &libc::stat) -> Entry {
    Entry {
        kind: st.st_mode & libc::S_IFMT,
        perm: st.st_mode & 0o7777,
        uid: st.st_uid,
        gid: st.st_gid,
        size: st.st_size as u64,
        dev: st.st_dev,
    }
}

/// Whether this process runs as root (and may give files to their owners).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}
// ---- only regular files ------------------------------------------------------------------
//
// A configured path or a state file may be a FIFO (an open blocks until a writer comes,
// forever), a device (`/dev/zero` reads without end), a socket, or a file of a kernel
// pseudo-filesystem (`/proc/self/status` says it is a regular file of 0 bytes, then reads
// whatever the kernel makes up). None of them is ever read: [`open_regular`] and
// [`open_dir`] refuse them without blocking, with a [`NotRegular`] error.

/// Why a path was refused: what it is, and what it should have been.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotRegular {
    /// "a FIFO (named pipe)", "a character device", ...
    pub what: &'static str,
    /// "a regular file" or "a folder".
    pub expected: &'static str,
}

impl std::fmt::Display for NotRegular {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}, not {}: refused without reading it",
            self.what, self.expected
        )
    }
}

impl std::error::Error for NotRegular {}

impl NotRegular {
    fn err(what: &'static str, expected: &'static str) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidInput, NotRegular { what, expected })
    }
}

/// The [`NotRegular`] inside `e`, when `e` is a refusal of [`open_regular`] or [`open_dir`].
pub fn not_regular(e: &io::Error) -> Option<NotRegular> {
    e.get_ref()?.downcast_ref::<NotRegular>().copied()
}

const REGULAR: &str = "a regular file";
const FOLDER: &str = "a folder";

/// What a file of mode `mode` is, in words.
fn kind(mode: u32) -> &'static str {
    match mode & libc::S_IFMT {
        libc::S_IFREG => "a regular file",
        libc::S_IFDIR => "a folder",
        libc::S_IFIFO => "a FIFO (named pipe)",
        libc::S_IFCHR => "a character device",
        libc::S_IFBLK => "a block device",
        libc::S_IFSOCK => "a socket",
        libc::S_IFLNK => "a symlink",
        _ => "a special file",
    }
}

/// What the file `m` describes is, in words ("a FIFO (named pipe)", "a folder", ...).
pub fn kind_of(m: &fs::Metadata) -> &'static str {
    kind(std::os::unix::fs::MetadataExt::mode(m))
}

/// `Err` when `m` is not of the type `expected` (`S_IFREG` or `S_IFDIR`).
fn expect_type(m: &fs::Metadata, ifmt: u32) -> io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    if m.mode() & libc::S_IFMT == ifmt {
        return Ok(());
    }
    let expected = if ifmt == libc::S_IFDIR {
        FOLDER
    } else {
        REGULAR
    };
    Err(NotRegular::err(kind(m.mode()), expected))
}

/// The kernel pseudo-filesystems whose files are made up on each read: procfs and its
/// kin, by the filesystem's magic number. Asked of the open descriptor (`fstatfs`), not
/// told by the path: procfs may be mounted anywhere (`/host/proc` in a container),
/// reached through a symlink or a bind mount, and a path prefix says nothing about what
/// a later component resolves to.
fn pseudo_name(f_type: u32) -> Option<&'static str> {
    match f_type {
        0x0000_9fa0 => Some("a file of the kernel's proc filesystem"),
        0x6265_6572 => Some("a file of the kernel's sysfs"),
        0x6462_6720 => Some("a file of the kernel's debugfs"),
        0x7472_6163 => Some("a file of the kernel's tracefs"),
        0x7363_6673 => Some("a file of the kernel's securityfs"),
        0x0027_e0eb | 0x6367_7270 => Some("a file of the kernel's cgroup filesystem"),
        0x6265_6570 => Some("a file of the kernel's configfs"),
        0xcafe_4a11 => Some("a file of the kernel's bpf filesystem"),
        0xde5e_81e4 => Some("a file of the kernel's efivarfs"),
        _ => None,
    }
}

/// [`pseudo_name`] of the filesystem holding the open file `f`.
#[cfg(target_os = "linux")]
fn pseudo_filesystem(f: &fs::File) -> io::Result<Option<&'static str>> {
    use std::os::fd::AsRawFd;
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `f` is an open descriptor and `st` a valid out-pointer.
    if unsafe { libc::fstatfs(f.as_raw_fd(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // f_type's C type differs between targets; the magic numbers are 32-bit.
    Ok(pseudo_name(st.f_type as u32))
}

/// [`pseudo_name`] of the filesystem holding `path`, without opening it (`statfs`):
/// opening and closing a SQLite database this process has open would drop its locks.
#[cfg(target_os = "linux")]
fn pseudo_filesystem_at(path: &Path) -> io::Result<Option<&'static str>> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).map_err(io::Error::other)?;
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid NUL-terminated path and `st` a valid out-pointer.
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(pseudo_name(st.f_type as u32))
}

#[cfg(not(target_os = "linux"))]
fn pseudo_filesystem(_f: &fs::File) -> io::Result<Option<&'static str>> {
    Ok(None)
}

#[cfg(not(target_os = "linux"))]
fn pseudo_filesystem_at(_path: &Path) -> io::Result<Option<&'static str>> {
    Ok(None)
}

/// Open with `O_NONBLOCK` (a FIFO opens at once instead of waiting for a writer) and
/// `O_NOCTTY`, then check what was opened: the path may have been swapped since it was
/// looked at, so the descriptor's own `fstat` and `fstatfs` decide.
fn open_checked(
    path: &Path,
    ifmt: u32,
    extra: libc::c_int,
    blocking: bool,
) -> io::Result<(fs::File, fs::Metadata)> {
    let expected = if ifmt == libc::S_IFDIR {
        FOLDER
    } else {
        REGULAR
    };
    let f = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC | extra)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            // open(2) of a unix socket.
            Some(libc::ENXIO) => NotRegular::err("a socket", expected),
            Some(libc::ELOOP) if extra & libc::O_NOFOLLOW != 0 => {
                NotRegular::err("a symlink", expected)
            }
            _ => e,
        })?;
    let m = f.metadata()?;
    expect_type(&m, ifmt)?;
    if let Some(what) = pseudo_filesystem(&f)? {
        return Err(NotRegular::err(what, expected));
    }
    if !blocking {
        return Ok((f, m));
    }
    // Regular files ignore O_NONBLOCK, but the descriptor may be handed on: clear it.
    // SAFETY: fcntl on a descriptor we own, with integer arguments only.
    unsafe {
        use std::os::fd::AsRawFd;
        let fl = libc::fcntl(f.as_raw_fd(), libc::F_GETFL);
        if fl >= 0 {
            libc::fcntl(f.as_raw_fd(), libc::F_SETFL, fl & !libc::O_NONBLOCK);
        }
    }
    Ok((f, m))
}

/// Open `path` for reading only if it is a regular file on a real filesystem; a symlink
/// is followed when `follow`, else refused (`O_NOFOLLOW`). It is looked at first without
/// opening it (a `stat` never blocks, and opening some devices has effects: a tape
/// rewinds), then opened without blocking and its descriptor checked again. Refusals are
/// [`NotRegular`] errors (see [`not_regular`]); a missing file is `NotFound` as usual.
pub fn open_regular(path: &Path, follow: bool) -> io::Result<fs::File> {
    let m = if follow {
        fs::metadata(path)?
    } else {
        fs::symlink_metadata(path)?
    };
    expect_type(&m, libc::S_IFREG)?;
    open_checked(
        path,
        libc::S_IFREG,
        if follow { 0 } else { libc::O_NOFOLLOW },
        true,
    )
    .map(|(f, _)| f)
}

/// [`open_regular`] for a path the caller has just looked at and found a regular file
/// (a state file, stat-ed by the scan): no second `stat`, and the descriptor, read
/// and dropped by the caller, keeps `O_NONBLOCK` (which regular files ignore). What was
/// swapped in since the look is refused as by [`open_regular`]. Returns the file and
/// what its descriptor's `fstat` said.
pub fn reopen_regular(path: &Path, follow: bool) -> io::Result<(fs::File, fs::Metadata)> {
    open_checked(
        path,
        libc::S_IFREG,
        if follow { 0 } else { libc::O_NOFOLLOW },
        false,
    )
}

/// Open the folder `name` inside the open folder `dir`, never following a link there
/// (`O_DIRECTORY | O_NOFOLLOW`: `ELOOP` for a symlink, `ENOTDIR` for anything that is not
/// a folder). One path component for the kernel to walk.
pub fn open_dir_at(dir: &fs::File, name: &std::ffi::OsStr) -> io::Result<fs::File> {
    use std::os::fd::AsRawFd;
    Ok(subfolder(dir.as_raw_fd(), name)?.into())
}

/// The subfolder `name` of the open folder `dir`, opened `O_DIRECTORY | O_NOFOLLOW`.
fn subfolder(dir: std::os::fd::RawFd, name: &std::ffi::OsStr) -> io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    let c = cstr(name)?;
    // SAFETY: a valid descriptor and a NUL-terminated name; the result is a new fd.
    let fd = check(unsafe {
        libc::openat(
            dir,
            c.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
    })?;
    // SAFETY: `fd` was just opened and is owned by nobody else.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) })
}

/// [`reopen_regular`] of `name` inside the open folder `dir`, a symlink refused: opened
/// without blocking (`O_NONBLOCK | O_NOFOLLOW`), and the descriptor's own `fstat` and
/// `fstatfs` must say a regular file on a real filesystem ([`NotRegular`] otherwise).
pub fn reopen_regular_at(
    dir: &fs::File,
    name: &std::ffi::OsStr,
) -> io::Result<(fs::File, fs::Metadata)> {
    use std::os::fd::{AsRawFd, FromRawFd};
    let c = cstr(name)?;
    // SAFETY: a valid descriptor and a NUL-terminated name; the result is a new fd.
    let fd = unsafe {
        libc::openat(
            dir.as_raw_fd(),
            c.as_ptr(),
            libc::O_RDONLY | libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        let e = io::Error::last_os_error();
        return Err(match e.raw_os_error() {
            Some(libc::ENXIO) => NotRegular::err("a socket", REGULAR),
            Some(libc::ELOOP) => NotRegular::err("a symlink", REGULAR),
            _ => e,
        });
    }
    // SAFETY: `fd` was just opened and is owned by nobody else.
    let f = unsafe { fs::File::from_raw_fd(fd) };
    let m = f.metadata()?;
    expect_type(&m, libc::S_IFREG)?;
    if let Some(what) = pseudo_filesystem(&f)? {
        return Err(NotRegular::err(what, REGULAR));
    }
    Ok((f, m))
}

/// The type of `path` (links followed), when it exists: `Err` with a [`NotRegular`] when
/// it is a special file (a FIFO, a device, a socket) or a file of a pseudo-filesystem,
/// where `folder` says which of a regular file or a folder it should be. Nothing is
/// opened (`stat` and `statfs` only): nothing can block, and no lock SQLite holds on
/// the file in this process is dropped by a close. A regular file where a folder is expected (or
/// the reverse) is `Ok`: the caller says what is wrong with it.
pub fn check_kind(path: &Path, folder: bool) -> io::Result<Option<fs::Metadata>> {
    let m = match fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let expected = if folder { FOLDER } else { REGULAR };
    if !(m.is_file() || m.is_dir()) {
        return Err(NotRegular::err(
            kind(std::os::unix::fs::MetadataExt::mode(&m)),
            expected,
        ));
    }
    if let Some(what) = pseudo_filesystem_at(path)? {
        return Err(NotRegular::err(what, expected));
    }
    Ok(Some(m))
}

/// Open the folder `path` (links followed), refusing without blocking what is not a
/// folder on a real filesystem: a FIFO or a device is a [`NotRegular`] error, a regular
/// file `NotADirectory`.
pub fn open_dir(path: &Path) -> io::Result<fs::File> {
    let m = fs::metadata(path)?;
    if m.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::NotADirectory,
            "a regular file, not a folder",
        ));
    }
    expect_type(&m, libc::S_IFDIR)?;
    open_checked(path, libc::S_IFDIR, libc::O_DIRECTORY, true).map(|(f, _)| f)
}

/// A file with no name in the folder `dir` (`O_TMPFILE`, mode 0600): scratch space on
/// that folder's filesystem that nothing else can open and that is gone with its
/// descriptor, whatever ends the process. A link at `dir` is refused (`O_NOFOLLOW`: the
/// kernel does not follow it to find the folder). Filesystems without
/// `O_TMPFILE` refuse (`EOPNOTSUPP`, `EISDIR` on old kernels), and so does every system
/// but Linux.
#[cfg(not(target_os = "linux"))]
pub fn anonymous_file_in(_dir: &Path) -> io::Result<fs::File> {
    Err(io::Error::from(io::ErrorKind::Unsupported))
}

/// See the other [`anonymous_file_in`].
#[cfg(target_os = "linux")]
pub fn anonymous_file_in(dir: &Path) -> io::Result<fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    fs::OpenOptions::new()
        .read(true)
        .write(true)
        .mode(0o600)
        .custom_flags(libc::O_TMPFILE | libc::O_NOFOLLOW)
        .open(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mkfifo(p: &Path) {
        use std::os::unix::ffi::OsStrExt;
        let c = std::ffi::CString::new(p.as_os_str().as_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    }

    fn refused(r: io::Result<fs::File>) -> NotRegular {
        let e = r.expect_err("refused");
        not_regular(&e).unwrap_or_else(|| panic!("not a NotRegular: {e}"))
    }

    #[test]
    fn only_regular_files_open() {
        let d = tempfile::tempdir().unwrap();
        let fifo = d.path().join("fifo");
        mkfifo(&fifo);
        let sock = d.path().join("sock");
        let _l = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        let file = d.path().join("file");
        fs::write(&file, b"x").unwrap();
        let link = d.path().join("link");
        std::os::unix::fs::symlink(&file, &link).unwrap();

        assert_eq!(
            refused(open_regular(&fifo, true)).what,
            "a FIFO (named pipe)"
        );
        assert_eq!(
            refused(open_regular(Path::new("/dev/zero"), true)).what,
            "a character device"
        );
        assert_eq!(refused(open_regular(&sock, true)).what, "a socket");
        assert!(
            refused(open_regular(Path::new("/proc/self/status"), true))
                .what
                .contains("proc")
        );
        assert!(
            refused(open_regular(d.path(), true))
                .what
                .contains("folder")
        );
        assert_eq!(refused(open_regular(&link, false)).what, "a symlink");
        assert!(open_regular(&link, true).is_ok());
        assert!(open_regular(&file, false).is_ok());
        assert_eq!(
            open_regular(&d.path().join("none"), true)
                .unwrap_err()
                .kind(),
            io::ErrorKind::NotFound
        );
        // The descriptor handed back blocks as usual.
        let f = open_regular(&file, true).unwrap();
        use std::os::fd::AsRawFd;
        // SAFETY: F_GETFL on an open descriptor.
        let fl = unsafe { libc::fcntl(f.as_raw_fd(), libc::F_GETFL) };
        assert_eq!(fl & libc::O_NONBLOCK, 0);
    }

    #[test]
    fn only_real_folders_open() {
        let d = tempfile::tempdir().unwrap();
        let fifo = d.path().join("fifo");
        mkfifo(&fifo);
        assert_eq!(refused(open_dir(&fifo)).expected, "a folder");
        assert!(
            refused(open_dir(Path::new("/proc/self")))
                .what
                .contains("proc")
        );
        assert!(open_dir(d.path()).is_ok());
        let file = d.path().join("file");
        fs::write(&file, b"x").unwrap();
        assert_eq!(
            open_dir(&file).unwrap_err().kind(),
            io::ErrorKind::NotADirectory
        );
        assert!(check_kind(&fifo, true).is_err());
        assert!(check_kind(Path::new("/proc/self/status"), false).is_err());
        assert!(check_kind(&file, true).unwrap().is_some());
        assert!(check_kind(&d.path().join("none"), false).unwrap().is_none());
    }
}
