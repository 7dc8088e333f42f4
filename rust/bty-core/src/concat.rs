//! gzip and bzip2 files read the way `gzip -dc` and `bzip2 -dc` read them:
//! every gzip member (concatenated files, bgzip) or bzip2 stream (pbzip2) to
//! the end of the file, and zero bytes after the last one (images padded to
//! a block or sector size) accepted and counted. Anything else after the
//! last member is refused: the reference tools skip it with a warning, but a
//! flash that cannot say what those bytes are is not one bty reports as done.

use std::io::{self, BufRead, Read};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Zero bytes found after the last member; shared with whoever reports it.
#[derive(Debug, Clone, Default)]
pub struct Padding(Arc<AtomicU64>);

impl Padding {
    pub fn bytes(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Gzip,
    Bzip2,
}

impl Kind {
    /// The first byte of a member; the member's decoder checks the rest of
    /// the signature.
    fn lead(self) -> u8 {
        match self {
            Kind::Gzip => 0x1f,
            Kind::Bzip2 => b'B',
        }
    }
    fn what(self) -> &'static str {
        match self {
            Kind::Gzip => "gzip member",
            Kind::Bzip2 => "bzip2 stream",
        }
    }
}

/// One member's decoder. Both stop at the member's end and leave what follows
/// unconsumed in the `BufRead`, which is how the next one is found.
enum Member<R: BufRead> {
    Gzip(flate2::bufread::GzDecoder<R>),
    Bzip2(bzip2::bufread::BzDecoder<R>),
}

impl<R: BufRead> Member<R> {
    fn new(kind: Kind, r: R) -> Self {
        match kind {
            Kind::Gzip => Member::Gzip(flate2::bufread::GzDecoder::new(r)),
            Kind::Bzip2 => Member::Bzip2(bzip2::bufread::BzDecoder::new(r)),
        }
    }
    fn into_inner(self) -> R {
        match self {
            Member::Gzip(d) => d.into_inner(),
            Member::Bzip2(d) => d.into_inner(),
        }
    }
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Member::Gzip(d) => d.read(buf),
            Member::Bzip2(d) => d.read(buf),
        }
    }
}

/// The decoded bytes of every member in turn.
pub struct Members<R: BufRead> {
    kind: Kind,
    cur: Option<Member<R>>,
    padding: Padding,
}

impl<R: BufRead> Members<R> {
    pub fn new(kind: Kind, r: R, padding: Padding) -> Self {
        Members { kind, cur: Some(Member::new(kind, r)), padding }
    }

    /// After the last member: end of file, or zeros up to it.
    fn skip_padding(&self, mut r: R) -> io::Result<()> {
        let mut zeros = 0u64;
        loop {
            let b = r.fill_buf()?;
            if b.is_empty() {
                self.padding.0.fetch_add(zeros, Ordering::Relaxed);
                return Ok(());
            }
            if let Some(i) = b.iter().position(|&x| x != 0) {
                return Err(trailing_data(self.kind, zeros + i as u64));
            }
            let n = b.len();
            zeros += n as u64;
            r.consume(n);
        }
    }
}

fn trailing_data(kind: Kind, zeros: u64) -> io::Error {
    let after = if zeros > 0 { format!(" (after {zeros} zero bytes)") } else { String::new() };
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!(
            "the data after the last {}{after} is neither another one nor zero padding: the file is damaged \
             or has something appended; get a good copy of the image",
            kind.what()
        ),
    )
}

impl<R: BufRead> Read for Members<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let Some(cur) = self.cur.as_mut() else { return Ok(0) };
            let n = cur.read(buf)?;
            if n > 0 || buf.is_empty() {
                return Ok(n);
            }
            // This member is complete (its decoder checked its trailer).
            let mut r = self.cur.take().expect("a current member").into_inner();
            match r.fill_buf()?.first() {
                None => return Ok(0),
                Some(&b) if b == self.kind.lead() => self.cur = Some(Member::new(self.kind, r)),
                Some(0) => {
                    self.skip_padding(r)?;
                    return Ok(0);
                }
                Some(_) => return Err(trailing_data(self.kind, 0)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn gz(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn bz(data: &[u8]) -> Vec<u8> {
        let mut e = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::fast());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn decode(kind: Kind, file: &[u8]) -> (io::Result<Vec<u8>>, u64) {
        let pad = Padding::default();
        // A tiny buffer puts member boundaries and padding across refills.
        let r = io::BufReader::with_capacity(7, file);
        let mut out = Vec::new();
        let res = Members::new(kind, r, pad.clone()).read_to_end(&mut out).map(|_| out);
        (res, pad.bytes())
    }

    #[test]
    fn members_padding_and_garbage() {
        let a: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let b = vec![9u8; 5000];
        let whole = [a.clone(), b.clone()].concat();
        for (kind, enc) in [(Kind::Gzip, gz as fn(&[u8]) -> Vec<u8>), (Kind::Bzip2, bz)] {
            let two = [enc(&a), enc(&b)].concat();
            let (got, pad) = decode(kind, &two);
            assert!(got.unwrap() == whole, "{kind:?}: every member is decoded");
            assert_eq!(pad, 0);

            let padded = [two.clone(), vec![0u8; 4096]].concat();
            let (got, pad) = decode(kind, &padded);
            assert!(got.unwrap() == whole);
            assert_eq!(pad, 4096, "{kind:?}");

            let garbage = [two.clone(), b"junk".to_vec()].concat();
            let e = decode(kind, &garbage).0.unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidData);
            assert!(e.to_string().contains("neither another one nor zero padding"), "{e}");

            let zeros_then_garbage = [two.clone(), vec![0u8; 100], vec![1u8]].concat();
            let e = decode(kind, &zeros_then_garbage).0.unwrap_err();
            assert!(e.to_string().contains("after 100 zero bytes"), "{e}");

            let cut = &two[..two.len() - 3];
            assert!(decode(kind, cut).0.is_err(), "{kind:?}: a cut last member is an error");
        }
    }
}
