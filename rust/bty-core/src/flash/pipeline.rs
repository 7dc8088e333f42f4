//! The streaming pipeline behind [`execute`].
//!
//! Three threads joined by bounded channels: *fetch* reads the published
//! stream and hashes it, *decode* decompresses into aligned 4 MiB buffers,
//! *write* hands them to the [`Sink`]. The calling thread reports progress and
//! watches for cancellation. Memory stays bounded by the channel depths and the
//! buffer pool (about 30 MiB), whatever the image size.

use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::progress::{Phase, Progress};
use super::target::TargetKind;
use super::writer::{AlignedBuf, Sink, ZeroPolicy, CHUNK};
use super::{FlashRequest, FlashSummary, Plan, Timings};
use crate::digest::{Digests, StreamDigests};
use crate::error::{Error, ErrorKind, Result};
use crate::format::{self, ImageFormat};
use crate::source::Source;

const FETCH_CHUNK: usize = 1 << 20;
const FETCH_DEPTH: usize = 8;
const POOL: usize = 4;
const TICK: Duration = Duration::from_millis(200);

struct Shared {
    read: AtomicU64,
    /// Image bytes the sink has written: what the target holds. Progress
    /// counts these, not the bytes decoded, which run ahead of them by the
    /// chunks queued for the writer.
    written: AtomicU64,
    padding: crate::concat::Padding,
    stop: AtomicBool,
    first_error: Mutex<Option<Error>>,
}

impl Shared {
    /// Record the root cause; later errors are consequences of it.
    fn fail(&self, e: Error) {
        let mut slot = self.first_error.lock().unwrap();
        if slot.is_none() {
            *slot = Some(e);
        }
        self.stop.store(true, Ordering::SeqCst);
    }
    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }
}

/// Reads what the fetch thread sends; a fetch error surfaces as the I/O
/// error the decoder sees, so decompressors report it in their own terms.
/// `consumed` counts what the decoder took, so bytes it never asked for
/// (data after the end of a compressed stream) are noticed.
struct ChannelReader {
    rx: Receiver<io::Result<Vec<u8>>>,
    cur: Vec<u8>,
    pos: usize,
    consumed: Arc<AtomicU64>,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.cur.len() {
            match self.rx.recv() {
                Ok(Ok(v)) => {
                    self.cur = v;
                    self.pos = 0;
                }
                Ok(Err(e)) => return Err(e),
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.cur.len() - self.pos);
        buf[..n].copy_from_slice(&self.cur[self.pos..self.pos + n]);
        self.pos += n;
        self.consumed.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

/// Write the planned image. Call only with a valid plan; the target is
/// re-checked first. `cancel` may be set from a signal handler.
pub fn execute(
    plan: &Plan,
    req: &FlashRequest,
    cancel: &AtomicBool,
    on_progress: &mut dyn FnMut(&Progress),
) -> Result<FlashSummary> {
    if !plan.is_valid() {
        return Err(Error::failure(format!("refusing to flash: {}", plan.problems.join("; "))));
    }
    let started = Instant::now();
    let target = plan.target.recheck(plan.virtual_size)?;
    let handles = target.open_for_write()?;
    let zeros = match target.kind {
        TargetKind::File => ZeroPolicy::Holes,
        TargetKind::BlockDevice | TargetKind::Partition if target.zeroes_offload && req.bmap.is_none() => {
            ZeroPolicy::Offload
        }
        TargetKind::BlockDevice | TargetKind::Partition => ZeroPolicy::WriteAll,
    };
    let sink = Sink::new(handles, target.logical_block_size, zeros, req.bmap.as_ref(), plan.verify);
    let shared = Shared {
        read: AtomicU64::new(0),
        written: AtomicU64::new(0),
        padding: Default::default(),
        stop: AtomicBool::new(false),
        first_error: Mutex::new(None),
    };
    let capacity = target.size_bytes;
    let consumed = Arc::new(AtomicU64::new(0));

    let (published, total, sink) = std::thread::scope(|s| {
        let (pool_tx, pool_rx) = sync_channel::<AlignedBuf>(POOL);
        for _ in 0..POOL {
            pool_tx.send(AlignedBuf::new(CHUNK)).unwrap();
        }
        let (chunk_tx, chunk_rx) = sync_channel::<(u64, AlignedBuf)>(POOL);

        let decoder_input: Box<dyn Read + Send>;
        let mut fetch = None;
        if plan.format == ImageFormat::Qcow2 {
            decoder_input = Box::new(io::empty());
        } else {
            let (tx, rx) = sync_channel(FETCH_DEPTH);
            decoder_input =
                Box::new(ChannelReader { rx, cur: Vec::new(), pos: 0, consumed: consumed.clone() });
            let shared = &shared;
            let source = &req.source;
            fetch = Some(s.spawn(move || fetch_thread(source, tx, shared)));
        }

        let shared_d = &shared;
        let decode = s.spawn(move || {
            let r = decode_thread(plan, req, decoder_input, pool_rx, chunk_tx, capacity, shared_d);
            r.map_err(|e| shared_d.fail(e)).ok()
        });
        let shared_w = &shared;
        let write = s.spawn(move || {
            let mut sink = sink;
            for (offset, buf) in chunk_rx {
                if shared_w.stopped() {
                    break;
                }
                if let Err(e) = sink.put(offset, buf.data()) {
                    shared_w.fail(e);
                    break;
                }
                shared_w.written.store(offset + buf.len as u64, Ordering::Relaxed);
                let _ = pool_tx.send(buf);
            }
            sink
        });

        let mut last = Instant::now();
        let total_hint = plan.virtual_size;
        while !(decode.is_finished() && write.is_finished()) {
            std::thread::sleep(Duration::from_millis(20));
            if cancel.load(Ordering::Relaxed) {
                // The message, with what reached the target, is written once the writer stopped.
                shared.fail(Error::new(ErrorKind::Cancelled, "cancelled"));
            }
            if last.elapsed() >= TICK {
                last = Instant::now();
                on_progress(&progress(Phase::Write, &shared, total_hint, plan.published_size, started));
            }
        }
        let total = decode.join().expect("decode thread panicked");
        let sink = write.join().expect("write thread panicked");
        let published = fetch.map(|f| f.join().expect("fetch thread panicked"));
        on_progress(&progress(Phase::Write, &shared, total_hint, plan.published_size, started));
        (published.flatten(), total, sink)
    });

    if let Some(e) = shared.first_error.lock().unwrap().take() {
        if e.kind() == ErrorKind::Cancelled {
            // Sync what was written, so the count below is what the target
            // holds even after a power cut.
            let synced = sink.sync().is_ok();
            let done = shared.written.load(Ordering::Relaxed);
            return Err(Error::new(
                ErrorKind::Cancelled,
                format!(
                    "cancelled after {} of the image was written to the target{}; the target holds a \
                     partial write: do not boot it, flash it again",
                    crate::disks::human_size(done),
                    if synced { " and synced" } else { " (the sync failed)" }
                ),
            ));
        }
        return Err(e);
    }
    let total = total.expect("decode reported no error and no total");
    let (read, used) = (shared.read.load(Ordering::Relaxed), consumed.load(Ordering::Relaxed));
    if plan.format != ImageFormat::Qcow2 && used < read {
        return Err(Error::integrity(format!(
            "{} ({}) has {} bytes after the end of its data (byte {used} of {read}); the file is damaged \
             or two files were joined: the target holds the decoded part, flash a good copy",
            plan.name,
            plan.format,
            read - used
        )));
    }
    let write_s = started.elapsed().as_secs_f64();

    // Integrity of the published stream: checked before anything is called done.
    let published = match plan.format {
        ImageFormat::Qcow2 if !plan.expected.is_empty() => Some(hash_local(&req.source)?),
        _ => published,
    };
    if let Some(d) = &published {
        plan.expected.check(d, &plan.name)?;
    }
    if let Some(v) = plan.virtual_size {
        if v != total && (plan.virtual_size_exact || total < v) {
            return Err(Error::integrity(format!(
                "{} should expand to {v} bytes but produced {total}; the image is truncated or corrupt",
                plan.name
            )));
        }
    }
    if let Some(b) = &req.bmap {
        if b.image_size != total {
            return Err(Error::integrity(format!(
                "the block map describes {} bytes but the image has {total}; they do not belong together",
                b.image_size
            )));
        }
    }
    let (handles, chunk_sums, stats) = sink.finish(total)?;
    let written_checksum = chunk_sums.as_ref().map(|sums| {
        let mut h = xxhash_rust::xxh3::Xxh3::new();
        for (_, sum) in sums {
            h.update(&sum.to_le_bytes());
        }
        format!("{:032x}", h.digest128())
    });

    let t_sync = Instant::now();
    on_progress(&phase_event(Phase::Sync, total, started));
    handles.direct.sync_all().map_err(|e| Error::io("fsync of the target failed", e))?;
    handles.buffered.sync_all().map_err(|e| Error::io("fsync of the target failed", e))?;
    let sync_s = t_sync.elapsed().as_secs_f64();

    // Verify before the partition-table fix-ups: they rewrite GPT headers
    // inside the image range on purpose.
    let t_verify = Instant::now();
    let verified = if plan.verify {
        let sums = chunk_sums.expect("verify checksums requested");
        verify_readback(plan, req, total, &sums, &mut *on_progress, started)?;
        true
    } else {
        false
    };
    let verify_s = t_verify.elapsed().as_secs_f64();
    let mut gpt_backup_moved = false;
    let mut partition_table_reread = None;
    if target.kind == TargetKind::BlockDevice {
        on_progress(&phase_event(Phase::Finalize, total, started));
        if let Some(cap) = capacity.filter(|&c| c > total) {
            gpt_backup_moved =
                crate::partition::relocate_gpt_backup(&handles.buffered, cap, target.logical_block_size)?;
        }
        drop(handles.direct);
        partition_table_reread = Some(reread_partitions(&handles.buffered));
    }

    let mut notes = Vec::new();
    if shared.padding.bytes() > 0 {
        notes.push(format!(
            "{} bytes of zero padding after the {} stream were ignored (as `{} -dc` does)",
            shared.padding.bytes(),
            plan.format,
            plan.format
        ));
    }
    let total_s = started.elapsed().as_secs_f64();
    Ok(FlashSummary {
        source: plan.source.clone(),
        target: plan.target.path.display().to_string(),
        format: plan.format,
        bytes_read: shared.read.load(Ordering::Relaxed),
        published,
        written_checksum_algorithm: written_checksum.as_ref().map(|_| super::WRITTEN_CHECKSUM_ALGORITHM),
        written_checksum,
        image_bytes: total,
        bytes_written: stats.written,
        bytes_skipped: stats.holes + stats.offloaded + stats.unmapped,
        verified,
        gpt_backup_moved,
        partition_table_reread,
        seconds: Timings { write: write_s, sync: sync_s, verify: verify_s, total: total_s },
        throughput_bps: total as f64 / total_s.max(1e-9),
        notes,
    })
}

fn progress(
    phase: Phase,
    sh: &Shared,
    total: Option<u64>,
    source_total: Option<u64>,
    started: Instant,
) -> Progress {
    let elapsed = started.elapsed().as_secs_f64();
    let bytes = sh.written.load(Ordering::Relaxed);
    Progress {
        phase,
        bytes,
        total,
        source_bytes: sh.read.load(Ordering::Relaxed),
        source_total,
        rate_bps: bytes as f64 / elapsed.max(1e-9),
        elapsed_s: elapsed,
    }
}

/// The start of a phase that cannot measure its own progress (one fsync, a
/// few header writes): `bytes` is what was written, and no total is given,
/// so nothing draws a percentage for it.
fn phase_event(phase: Phase, written: u64, started: Instant) -> Progress {
    Progress {
        phase,
        bytes: written,
        total: None,
        source_bytes: 0,
        source_total: None,
        rate_bps: 0.0,
        elapsed_s: started.elapsed().as_secs_f64(),
    }
}

fn fetch_thread(source: &Source, tx: SyncSender<io::Result<Vec<u8>>>, sh: &Shared) -> Option<Digests> {
    let broke = |e: &dyn std::fmt::Display, n: u64| {
        Error::integrity(format!(
            "reading {} failed after {n} bytes: {e}; nothing written can be trusted, flash again",
            source.display()
        ))
    };
    let mut opened = match source.open() {
        Ok(o) => o,
        Err(e) => {
            sh.fail(e);
            return None;
        }
    };
    let mut digests = StreamDigests::new();
    loop {
        if sh.stopped() {
            return None;
        }
        let mut buf = vec![0u8; FETCH_CHUNK];
        let mut got = 0;
        // Fill the chunk so hashing and channel hops work on large blocks.
        let res = loop {
            match opened.reader.read(&mut buf[got..]) {
                Ok(0) => break Ok(()),
                Ok(n) => {
                    got += n;
                    if got == buf.len() {
                        break Ok(());
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => break Err(e),
            }
        };
        buf.truncate(got);
        digests.update(&buf);
        sh.read.fetch_add(got as u64, Ordering::Relaxed);
        if let Err(e) = res {
            let n = sh.read.load(Ordering::Relaxed);
            sh.fail(broke(&e, n));
            let _ = tx.send(Err(io::Error::new(e.kind(), e.to_string())));
            return None;
        }
        if got == 0 {
            return Some(digests.finish());
        }
        // A decoder that stopped early leaves the rest unread: hash it anyway,
        // so digests cover the whole file and the unread tail is counted.
        let _ = tx.send(Ok(buf));
    }
}

fn decode_thread(
    plan: &Plan,
    req: &FlashRequest,
    input: Box<dyn Read + Send>,
    pool: Receiver<AlignedBuf>,
    out: SyncSender<(u64, AlignedBuf)>,
    capacity: Option<u64>,
    sh: &Shared,
) -> Result<u64> {
    let mut reader: Box<dyn Read + Send> = match plan.format {
        ImageFormat::Qcow2 => {
            let Source::File(p) = &req.source else {
                return Err(Error::usage("qcow2 images are read from local files only"));
            };
            let f =
                std::fs::File::open(p).map_err(|e| Error::io(format!("cannot open {}", p.display()), e))?;
            Box::new(crate::qcow2::Qcow2Reader::open(f)?)
        }
        f => format::decoder_with_padding(f, input, &req.source, &sh.padding)?,
    };
    // Decoders carry refusals and their own integrity errors through
    // `io::Error`; anything else a decoder reports is damage.
    let corrupt = |e: io::Error, at: u64| {
        match Error::from_io(e) {
        Ok(inner) => Error::new(
            inner.kind(),
            format!("{}: {inner} (at image byte {at}; the target holds a partial write)", plan.name),
        ),
        Err(e) => Error::integrity(format!(
            "{} ({}) is corrupt or truncated at image byte {at}: {e}; the target holds a partial write, flash again",
            plan.name, plan.format
        )),
    }
    };
    let mut offset = 0u64;
    loop {
        let Ok(mut buf) = pool.recv() else { return Ok(offset) };
        buf.len = 0;
        while buf.len < buf.capacity() {
            if sh.stopped() {
                return Ok(offset);
            }
            match reader.read(buf.spare()) {
                Ok(0) => break,
                Ok(n) => buf.len += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(corrupt(e, offset + buf.len as u64)),
            }
        }
        if offset == 0 {
            format::refuse_inner(buf.data(), &plan.name, plan.format)?;
        }
        if buf.len == 0 {
            return Ok(offset);
        }
        if let Some(cap) = capacity {
            if offset + buf.len as u64 > cap {
                return Err(Error::failure(format!(
                    "the image is larger than the target ({} bytes): stopped before writing past its end; \
                     the target holds a partial write",
                    cap
                )));
            }
        }
        let n = buf.len as u64;
        if out.send((offset, buf)).is_err() {
            return Ok(offset);
        }
        offset += n;
    }
}

fn hash_local(source: &Source) -> Result<Digests> {
    let mut opened = source.open()?;
    let mut d = StreamDigests::new();
    let mut buf = vec![0u8; FETCH_CHUNK];
    loop {
        let n = opened
            .reader
            .read(&mut buf)
            .map_err(|e| Error::io(format!("cannot read {}", source.display()), e))?;
        if n == 0 {
            return Ok(d.finish());
        }
        d.update(&buf[..n]);
    }
}

/// BLKRRPART: make the kernel see the new partition table. Best effort: a
/// busy disk keeps its old view until re-plugged, which is reported, not fatal.
fn reread_partitions(f: &std::fs::File) -> bool {
    const BLKRRPART: libc::c_ulong = 0x125f; // _IO(0x12, 95)
                                             // SAFETY: BLKRRPART takes no argument.
    unsafe { libc::ioctl(f.as_raw_fd(), BLKRRPART as _) == 0 }
}

/// Read the target back and compare chunk checksums. Several chunks are in
/// flight at once: one synchronous reader leaves most devices idle.
fn verify_readback(
    plan: &Plan,
    req: &FlashRequest,
    total: u64,
    sums: &[(u64, u128)],
    on_progress: &mut dyn FnMut(&Progress),
    started: Instant,
) -> Result<()> {
    const READERS: usize = 4;
    let path = &plan.target.path;
    let open = || match plan.target.kind {
        TargetKind::BlockDevice | TargetKind::Partition => std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECT)
            .open(path)
            .or_else(|_| std::fs::File::open(path)),
        TargetKind::File => std::fs::File::open(path),
    };
    let f = open().map_err(|e| Error::io(format!("cannot reopen {} to verify", path.display()), e))?;
    // Drop cached pages so the comparison reads what reached the medium.
    // SAFETY: plain advisory call on an open descriptor.
    unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    let mapped: Option<Vec<(u64, u64)>> = req.bmap.as_ref().map(|b| {
        b.ranges
            .iter()
            .map(|r| (r.first_block * b.block_size, ((r.last_block + 1) * b.block_size).min(b.image_size)))
            .collect()
    });
    // The byte ranges of chunk `k` that were written, in order.
    let pieces = |k: u64| -> Vec<(u64, u64)> {
        let (a, b) = (k * CHUNK as u64, ((k + 1) * CHUNK as u64).min(total));
        match &mapped {
            None => vec![(a, b)],
            Some(m) => m.iter().filter(|r| r.0 < b && r.1 > a).map(|r| (r.0.max(a), r.1.min(b))).collect(),
        }
    };
    let to_check: u64 = sums.iter().map(|(k, _)| pieces(*k).iter().map(|(a, b)| b - a).sum::<u64>()).sum();
    let next = std::sync::atomic::AtomicUsize::new(0);
    let done = AtomicU64::new(0);
    let failure: Mutex<Option<Error>> = Mutex::new(None);
    let t0 = Instant::now();
    std::thread::scope(|s| {
        let workers: Vec<_> = (0..READERS)
            .map(|_| {
                s.spawn(|| {
                    let mut buf = AlignedBuf::new(CHUNK);
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(&(k, want)) = sums.get(i) else { return };
                        if failure.lock().unwrap().is_some() {
                            return;
                        }
                        let mut h = xxhash_rust::xxh3::Xxh3::new();
                        for (a, b) in pieces(k) {
                            let len = (b - a) as usize;
                            // O_DIRECT needs aligned lengths: read rounded up, use the prefix.
                            let aligned = len.div_ceil(4096) * 4096;
                            buf.len = 0;
                            let r = read_full_at(&f, &mut buf.spare()[..aligned], a).or_else(|_| {
                                read_full_at(&std::fs::File::open(path)?, &mut buf.spare()[..len], a)
                            });
                            let err = match r {
                                Ok(n) if n >= len => None,
                                Ok(n) => Some(Error::integrity(format!(
                                    "read-back of {} ended at byte {}",
                                    path.display(),
                                    a + n as u64
                                ))),
                                Err(e) => Some(Error::io(
                                    format!("read-back of {} failed at byte {a}", path.display()),
                                    e,
                                )),
                            };
                            if let Some(e) = err {
                                failure.lock().unwrap().get_or_insert(e);
                                return;
                            }
                            buf.len = len;
                            h.update(buf.data());
                            done.fetch_add(len as u64, Ordering::Relaxed);
                        }
                        if h.digest128() != want {
                            let at = k * CHUNK as u64;
                            failure.lock().unwrap().get_or_insert(Error::integrity(format!(
                                "read-back verification failed: {} does not hold what was written in the \
                                 4 MiB at byte {at}; the medium may be failing or counterfeit",
                                path.display()
                            )));
                            return;
                        }
                    }
                })
            })
            .collect();
        while workers.iter().any(|w| !w.is_finished()) {
            std::thread::sleep(TICK);
            let d = done.load(Ordering::Relaxed);
            on_progress(&Progress {
                phase: Phase::Verify,
                bytes: d,
                total: Some(to_check),
                source_bytes: 0,
                source_total: None,
                rate_bps: d as f64 / t0.elapsed().as_secs_f64().max(1e-9),
                elapsed_s: started.elapsed().as_secs_f64(),
            });
        }
    });
    match failure.into_inner().unwrap() {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

fn read_full_at(f: &std::fs::File, buf: &mut [u8], mut off: u64) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match f.read_at(&mut buf[got..], off) {
            Ok(0) => break,
            Ok(n) => {
                got += n;
                off += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}
