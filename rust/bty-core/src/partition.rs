//! Partition tables of disk images: reading them from the first bytes of an
//! image (for `bty inspect` and flash plans), and moving a GPT's backup copy to
//! the real end of a disk that is larger than the image written onto it.

use std::fs::File;
use std::io::Cursor;
use std::os::unix::fs::FileExt;

use crate::error::{Error, Result};

/// Which kind of partition table an image carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TableKind {
    Gpt,
    Mbr,
}

impl TableKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TableKind::Gpt => "gpt",
            TableKind::Mbr => "mbr",
        }
    }
}

/// A partition table as found in an image.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PartitionTable {
    pub kind: TableKind,
    pub sector_size: u64,
    /// GPT disk GUID, or the MBR disk signature as 8 hex digits.
    pub disk_guid: Option<String>,
    pub partitions: Vec<Partition>,
    pub gpt: Option<GptGeometry>,
}

/// One partition, with offsets in bytes from the start of the image.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Partition {
    /// 1-based: the GPT entry index, or the MBR slot (logical partitions from 5).
    pub number: u32,
    pub start_bytes: u64,
    pub size_bytes: u64,
    /// GPT type GUID (upper case) or MBR system id such as `0x83`.
    pub type_id: String,
    pub type_name: Option<String>,
    pub label: Option<String>,
    pub guid: Option<String>,
    /// MBR active flag, or the GPT "legacy BIOS bootable" attribute.
    pub bootable: bool,
}

/// Where the GPT structures sit, in sectors of [`PartitionTable::sector_size`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct GptGeometry {
    pub first_usable_lba: u64,
    pub last_usable_lba: u64,
    pub backup_lba: u64,
    pub entries_lba: u64,
    pub num_entries: u32,
    pub entry_size: u32,
}

impl PartitionTable {
    /// Bytes from the start of the image to the end of its last partition.
    pub fn span_bytes(&self) -> u64 {
        self.partitions.iter().map(|p| p.start_bytes.saturating_add(p.size_bytes)).max().unwrap_or(0)
    }
}

const GPT_SIGNATURE: &[u8; 8] = b"EFI PART";
const MBR_PROTECTIVE: u8 = 0xEE;
/// GPT attribute bit 2: legacy BIOS bootable.
const GPT_ATTR_LEGACY_BOOTABLE: u64 = 1 << 2;

/// Read the partition table from the first bytes of a decompressed image.
///
/// `Ok(None)` means the image has neither a GPT nor an MBR (a bare file
/// system, an ISO without a hybrid MBR, zeros). A table that is present but
/// damaged, or that does not fit in `head`, is an error.
pub fn read_table(head: &[u8]) -> Result<Option<PartitionTable>> {
    for ss in [512u64, 4096] {
        let at = ss as usize;
        if head.len() >= at + 8 && &head[at..at + 8] == GPT_SIGNATURE {
            return read_gpt(head, ss).map(Some);
        }
    }
    read_mbr(head)
}

fn read_gpt(head: &[u8], ss: u64) -> Result<PartitionTable> {
    let lb = match ss {
        512 => gpt::disk::LogicalBlockSize::Lb512,
        _ => gpt::disk::LogicalBlockSize::Lb4096,
    };
    let mut dev = Cursor::new(head);
    let hdr = gpt::header::read_header_from_arbitrary_device(&mut dev, lb).map_err(|e| {
        Error::failure(format!("the primary GPT header (LBA 1, {ss}-byte sectors) is invalid: {e}"))
    })?;
    // The crate asserts (panics) on any other entry size; the UEFI spec allows
    // 128 * 2^n, which no partitioning tool in use writes.
    if hdr.part_size != 128 {
        return Err(Error::failure(format!(
            "the GPT uses {}-byte partition entries; only 128-byte entries are supported",
            hdr.part_size
        )));
    }
    let entries_end = hdr.part_start.saturating_mul(ss).saturating_add(u64::from(hdr.num_parts) * 128);
    if entries_end > head.len() as u64 {
        return Err(Error::failure(format!(
            "the GPT partition entries end at byte {entries_end}, beyond the {} bytes read from the image \
             start; the image is truncated or its GPT is damaged",
            head.len()
        )));
    }
    let entries = gpt::partition::file_read_partitions(&mut dev, &hdr, lb)
        .map_err(|e| Error::failure(format!("the GPT partition entries are invalid: {e}")))?;
    let partitions = entries
        .iter()
        .filter(|(_, p)| p.is_used())
        .map(|(&number, p)| {
            let type_id = p.part_type_guid.guid.to_string().to_ascii_uppercase();
            Partition {
                number,
                start_bytes: p.first_lba.saturating_mul(ss),
                size_bytes: (p.last_lba.saturating_add(1).saturating_sub(p.first_lba)).saturating_mul(ss),
                type_name: gpt_type_name(&type_id).map(str::to_string),
                type_id,
                label: Some(p.name.clone()).filter(|n| !n.is_empty()),
                guid: Some(p.part_guid.to_string().to_ascii_uppercase()),
                bootable: p.flags & GPT_ATTR_LEGACY_BOOTABLE != 0,
            }
        })
        .collect();
    Ok(PartitionTable {
        kind: TableKind::Gpt,
        sector_size: ss,
        disk_guid: Some(hdr.disk_guid.to_string().to_ascii_uppercase()),
        partitions,
        gpt: Some(GptGeometry {
            first_usable_lba: hdr.first_usable,
            last_usable_lba: hdr.last_usable,
            backup_lba: hdr.backup_lba,
            entries_lba: hdr.part_start,
            num_entries: hdr.num_parts,
            entry_size: hdr.part_size,
        }),
    })
}

fn read_mbr(head: &[u8]) -> Result<Option<PartitionTable>> {
    if head.len() < 512 {
        return Ok(None);
    }
    let Ok(header) = mbrman::MBRHeader::read_from(&mut Cursor::new(&head[..512])) else {
        return Ok(None);
    };
    let primaries: Vec<(usize, &mbrman::MBRPartitionEntry)> =
        header.iter().filter(|(_, e)| e.is_used()).collect();
    // A FAT or NTFS boot sector also ends in 55 AA; only a table whose entries
    // look like partition entries is taken as one.
    let plausible = !primaries.is_empty()
        && header.iter().all(|(_, e)| e.boot == 0 || e.boot == 0x80)
        && primaries.iter().all(|(_, e)| e.starting_lba > 0 && e.sectors > 0);
    if !plausible {
        return Ok(None);
    }
    if primaries.iter().any(|(_, e)| e.sys == MBR_PROTECTIVE) {
        return Err(Error::failure(
            "the image has a protective MBR but no valid GPT header at LBA 1 (512- or 4096-byte sectors); \
             its GPT is damaged or the image is truncated",
        ));
    }
    let ss = 512u64;
    let mut partitions: Vec<Partition> = primaries
        .iter()
        .map(|&(i, e)| mbr_partition(i as u32, e.sys, e.boot, u64::from(e.starting_lba), e.sectors))
        .collect();
    if let Some((_, ext)) = primaries.iter().find(|(_, e)| e.is_extended()) {
        partitions.extend(logical_partitions(head, u64::from(ext.starting_lba)));
    }
    let sig = header.disk_signature;
    Ok(Some(PartitionTable {
        kind: TableKind::Mbr,
        sector_size: ss,
        disk_guid: Some(hex::encode([sig[3], sig[2], sig[1], sig[0]])).filter(|s| s != "00000000"),
        partitions,
        gpt: None,
    }))
}

/// The logical partitions of the extended partition starting at LBA
/// `ext_start`, from its chain of EBRs: each holds one partition (relative to
/// itself) and the link to the next EBR (relative to the extended partition).
/// The chain may lie beyond `head`; it then ends there, and the extended
/// container among the primaries still bounds `span_bytes`. A sector that
/// is not an EBR, or a link that does not move forward, ends it too.
///
/// Read here rather than with mbrman, whose LBA sums are unchecked u32
/// arithmetic: a hostile EBR made them overflow.
fn logical_partitions(head: &[u8], ext_start: u64) -> Vec<Partition> {
    let mut out = Vec::new();
    let mut rel = 0u64;
    loop {
        let ebr_lba = ext_start + rel;
        let at = (ebr_lba * 512) as usize;
        let Some(ebr) = head.get(at..at + 512) else { break };
        let entry = |i: usize| &ebr[446 + 16 * i..462 + 16 * i];
        let (this, next) = (entry(0), entry(1));
        if ebr[510..512] != [0x55, 0xAA] || [this[0], next[0]].iter().any(|&b| b != 0 && b != 0x80) {
            break;
        }
        let (start, sectors) = (le_u32(this, 8), le_u32(this, 12));
        if this[4] != 0 && sectors > 0 {
            let number = 5 + out.len() as u32;
            out.push(mbr_partition(number, this[4], this[0], ebr_lba + u64::from(start), sectors));
        }
        let next_rel = u64::from(le_u32(next, 8));
        if next[4] == 0 || next_rel <= rel {
            break;
        }
        rel = next_rel;
    }
    out
}

fn mbr_partition(number: u32, sys: u8, boot: u8, start: u64, sectors: u32) -> Partition {
    Partition {
        number,
        start_bytes: start * 512,
        size_bytes: u64::from(sectors) * 512,
        type_id: format!("0x{sys:02x}"),
        type_name: mbr_type_name(sys).map(str::to_string),
        label: None,
        guid: None,
        bootable: boot == 0x80,
    }
}

/// Names for the partition types OS images actually use.
pub fn gpt_type_name(guid: &str) -> Option<&'static str> {
    let table: &[(&str, &str)] = &[
        ("C12A7328-F81F-11D2-BA4B-00A0C93EC93B", "EFI System"),
        ("21686148-6449-6E6F-744E-656564454649", "BIOS boot"),
        ("0FC63DAF-8483-4772-8E79-3D69D8477DE4", "Linux filesystem"),
        ("0657FD6D-A4AB-43C4-84E5-0933C84B4F4F", "Linux swap"),
        ("E6D6D379-F507-44C2-A23C-238F2A3DF928", "Linux LVM"),
        ("A19D880F-05FC-4D3B-A006-743F0F84911E", "Linux RAID"),
        ("CA7D7CCB-63ED-4C53-861C-1742536059CC", "Linux LUKS"),
        ("44479540-F297-41B2-9AF7-D131D5F0458A", "Linux root (x86)"),
        ("4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709", "Linux root (x86-64)"),
        ("69DAD710-2CE4-4E3C-B16C-21A1D49ABED3", "Linux root (ARM)"),
        ("B921B045-1DF0-41C3-AF44-4C6F280D3FAE", "Linux root (ARM-64)"),
        ("BC13C2FF-59E6-4262-A352-B275FD6F7172", "Linux extended boot"),
        ("933AC7E1-2EB4-4F13-B844-0E14E2AEF915", "Linux home"),
        ("3B8F8425-20E0-4F3B-907F-1A25A76F98E8", "Linux server data"),
        ("4D21B016-B534-45C2-A9FB-5C16E091FD2D", "Linux variable data"),
        ("7EC6F557-3BC5-4ACA-B293-16EF5DF639D1", "Linux temporary data"),
        ("8DA63339-0007-60C0-C436-083AC8230908", "Linux reserved"),
        ("EBD0A0A2-B9E5-4433-87C0-68B6B72699C7", "Microsoft basic data"),
        ("E3C9E316-0B5C-4DB8-817D-F92DF00215AE", "Microsoft reserved"),
        ("DE94BBA4-06D1-4D40-A16A-BFD50179D6AC", "Windows recovery environment"),
        ("9E1A2D38-C612-4316-AA26-8B49521E5A8B", "PowerPC PReP boot"),
        ("83BD6B9D-7F41-11DC-BE0B-001560B84F0F", "FreeBSD boot"),
        ("516E7CB4-6ECF-11D6-8FF8-00022D09712B", "FreeBSD data"),
        ("6A898CC3-1DD2-11B2-99A6-080020736631", "Solaris /usr & Apple ZFS"),
        ("48465300-0000-11AA-AA11-00306543ECAC", "Apple HFS+"),
        ("7C3457EF-0000-11AA-AA11-00306543ECAC", "Apple APFS"),
        ("024DEE41-33E7-11D3-9D69-0008C781F39F", "MBR partition scheme"),
    ];
    table.iter().find(|(g, _)| g.eq_ignore_ascii_case(guid)).map(|(_, n)| *n)
}

/// Names for common MBR system ids.
pub fn mbr_type_name(sys: u8) -> Option<&'static str> {
    Some(match sys {
        0x01 => "FAT12",
        0x04 => "FAT16 <32M",
        0x05 => "Extended",
        0x06 => "FAT16",
        0x07 => "HPFS/NTFS/exFAT",
        0x0b => "W95 FAT32",
        0x0c => "W95 FAT32 (LBA)",
        0x0e => "W95 FAT16 (LBA)",
        0x0f => "W95 Extended (LBA)",
        0x17 => "Hidden HPFS/NTFS",
        0x27 => "Hidden NTFS WinRE",
        0x82 => "Linux swap",
        0x83 => "Linux",
        0x85 => "Linux extended",
        0x8e => "Linux LVM",
        0xa5 => "FreeBSD",
        0xa6 => "OpenBSD",
        0xa9 => "NetBSD",
        0xda => "Non-FS data",
        0xee => "GPT protective",
        0xef => "EFI System",
        0xfd => "Linux RAID autodetect",
        _ => return None,
    })
}

/// The fields of a GPT header that relocation reads or rewrites.
struct GptHeader {
    /// The header sector as read: bytes past the fields below (reserved,
    /// vendor extensions up to `header_size`) are kept as they are.
    raw: Vec<u8>,
    header_size: u32,
    current_lba: u64,
    backup_lba: u64,
    first_usable: u64,
    last_usable: u64,
    entries_lba: u64,
    num_entries: u32,
    entry_size: u32,
    entries_crc: u32,
}

fn le_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}
fn le_u64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

fn header_crc(raw: &[u8], header_size: u32) -> u32 {
    let mut h = raw[..header_size as usize].to_vec();
    h[16..20].fill(0);
    crc32fast::hash(&h)
}

impl GptHeader {
    /// `None` when the sector holds no GPT signature; an error when it does
    /// but the header is not self-consistent.
    fn parse(raw: Vec<u8>, lba: u64) -> Result<Option<GptHeader>> {
        if &raw[..8] != GPT_SIGNATURE {
            return Ok(None);
        }
        let header_size = le_u32(&raw, 12);
        if header_size < 92 || header_size as usize > raw.len() {
            return Err(Error::failure(format!(
                "the GPT header at LBA {lba} has an invalid size ({header_size})"
            )));
        }
        let stored = le_u32(&raw, 16);
        if header_crc(&raw, header_size) != stored {
            return Err(Error::failure(format!(
                "the GPT header at LBA {lba} fails its CRC32 check; the partition table is damaged, \
                 repair it (for example with `gdisk`) before relying on it"
            )));
        }
        let h = GptHeader {
            header_size,
            current_lba: le_u64(&raw, 24),
            backup_lba: le_u64(&raw, 32),
            first_usable: le_u64(&raw, 40),
            last_usable: le_u64(&raw, 48),
            entries_lba: le_u64(&raw, 72),
            num_entries: le_u32(&raw, 80),
            entry_size: le_u32(&raw, 84),
            entries_crc: le_u32(&raw, 88),
            raw,
        };
        if h.current_lba != lba {
            return Err(Error::failure(format!(
                "the GPT header at LBA {lba} says it is at LBA {}; the partition table is damaged",
                h.current_lba
            )));
        }
        if h.first_usable > h.last_usable {
            return Err(Error::failure(format!(
                "the GPT header at LBA {lba} has its first usable LBA ({}) after its last ({})",
                h.first_usable, h.last_usable
            )));
        }
        if h.entry_size < 128 || !h.entry_size.is_power_of_two() || h.num_entries == 0 {
            return Err(Error::failure(format!(
                "the GPT header at LBA {lba} describes {} entries of {} bytes, which is not a valid layout",
                h.num_entries, h.entry_size
            )));
        }
        Ok(Some(h))
    }

    fn entries_bytes(&self) -> u64 {
        u64::from(self.num_entries) * u64::from(self.entry_size)
    }

    /// The header sector with new locations and both CRCs recomputed.
    fn render(&self, current: u64, backup: u64, last_usable: u64, entries_lba: u64) -> Vec<u8> {
        let mut raw = self.raw.clone();
        raw[24..32].copy_from_slice(&current.to_le_bytes());
        raw[32..40].copy_from_slice(&backup.to_le_bytes());
        raw[48..56].copy_from_slice(&last_usable.to_le_bytes());
        raw[72..80].copy_from_slice(&entries_lba.to_le_bytes());
        let crc = header_crc(&raw, self.header_size);
        raw[16..20].copy_from_slice(&crc.to_le_bytes());
        raw
    }
}

fn pread(dev: &File, offset: u64, len: usize, what: &str) -> Result<Vec<u8>> {
    let mut buf = vec![0u8; len];
    dev.read_exact_at(&mut buf, offset)
        .map_err(|e| Error::io(format!("cannot read {what} at byte {offset}"), e))?;
    Ok(buf)
}

fn pwrite(dev: &File, offset: u64, buf: &[u8], what: &str) -> Result<()> {
    dev.write_all_at(buf, offset).map_err(|e| Error::io(format!("cannot write {what} at byte {offset}"), e))
}

fn sync(dev: &File) -> Result<()> {
    dev.sync_data().map_err(|e| Error::io("cannot flush the relocated GPT to the target", e))
}

/// Move the backup GPT (entry array and header) to the last sectors of a disk
/// that is larger than the image just written to it, and point the primary
/// header at it, extending the last usable LBA to the new end — what
/// `sgdisk -e` does. Without this, firmware and the kernel see a GPT whose
/// backup is missing and some refuse or "repair" it unpredictably.
///
/// Returns `Ok(false)` when the disk has no GPT (at `sector_size`) or the
/// backup is already at the end. A damaged primary header is an error: its
/// contents are never guessed at.
///
/// This works on the raw sectors rather than through the `gpt` crate: the
/// crate re-serialises every entry from its own model and addresses the
/// device with seek + read/write, while this must copy the entry array byte
/// for byte and use positional I/O on a handle the flash pipeline shares.
pub fn relocate_gpt_backup(dev: &File, disk_size: u64, sector_size: u64) -> Result<bool> {
    let ss = sector_size.max(512);
    let ssz = ss as usize;
    let total_lbas = disk_size / ss;
    if total_lbas < 6 {
        return Ok(false);
    }
    let last_lba = total_lbas - 1;
    let Some(primary) = GptHeader::parse(pread(dev, ss, ssz, "the primary GPT header")?, 1)? else {
        return Ok(false);
    };
    if primary.backup_lba == last_lba {
        return Ok(false);
    }
    if primary.backup_lba > last_lba || primary.last_usable >= primary.backup_lba {
        return Err(Error::failure(format!(
            "the GPT on the target places its backup header at LBA {} but the disk ends at LBA {last_lba}; \
             the partition table does not fit this disk",
            primary.backup_lba
        )));
    }

    let entries_len = primary.entries_bytes();
    if entries_len > 16 << 20 {
        return Err(Error::failure(format!(
            "the GPT declares a {entries_len}-byte partition entry array, far beyond any real table; \
             the primary header is damaged"
        )));
    }
    let entries_sectors = entries_len.div_ceil(ss);
    let Some(entries_at) = primary.entries_lba.checked_mul(ss).filter(|&at| at < disk_size) else {
        return Err(Error::failure(format!(
            "the GPT places its partition entries at LBA {}, beyond the end of the disk at LBA {last_lba}; \
             the primary header is damaged",
            primary.entries_lba
        )));
    };
    let entries = pread(dev, entries_at, (entries_sectors * ss) as usize, "the GPT partition entries")?;
    if crc32fast::hash(&entries[..entries_len as usize]) != primary.entries_crc {
        return Err(Error::failure(
            "the GPT partition entry array fails its CRC32 check; the partition table is damaged, \
             repair it (for example with `gdisk`) before relying on it",
        ));
    }

    // The backup entries go right before the last sector, the new last
    // usable sector right before them; on a disk too small for that there
    // is nowhere to put them.
    let new_last_usable = last_lba.checked_sub(entries_sectors + 1).filter(|&l| l >= primary.last_usable);
    let Some(new_last_usable) = new_last_usable else {
        return Err(Error::failure(
            "the disk is too small to hold the backup GPT after the image's last usable sector",
        ));
    };
    let new_entries_lba = new_last_usable + 1;

    // Backup first: until the primary is rewritten it still points at the old
    // backup, so a crash at any step leaves one consistent pair on the disk.
    pwrite(dev, new_entries_lba * ss, &entries, "the backup GPT partition entries")?;
    let backup = primary.render(last_lba, 1, new_last_usable, new_entries_lba);
    pwrite(dev, last_lba * ss, &backup, "the backup GPT header")?;
    sync(dev)?;
    let new_primary = primary.render(1, last_lba, new_last_usable, primary.entries_lba);
    pwrite(dev, ss, &new_primary, "the primary GPT header")?;
    sync(dev)?;

    // The old backup header now lies in free space; a stale "EFI PART" there
    // would be found by tools that scan for lost headers. Only a sector that
    // really is the old backup header is cleared.
    let old = primary.backup_lba;
    if old > primary.last_usable && old < new_entries_lba {
        let raw = pread(dev, old * ss, ssz, "the old backup GPT header")?;
        if matches!(GptHeader::parse(raw, old), Ok(Some(_))) {
            pwrite(dev, old * ss, &vec![0u8; ssz], "the old backup GPT header")?;
        }
    }
    update_protective_mbr(dev, total_lbas)?;
    sync(dev)?;
    Ok(true)
}

/// A pure protective MBR covers the whole disk (or 0xFFFFFFFF sectors); grow
/// it with the disk. Hybrid MBRs (more than the one 0xEE entry) describe real
/// partitions for old firmware and are left exactly as the image has them.
fn update_protective_mbr(dev: &File, total_lbas: u64) -> Result<()> {
    let mut mbr = pread(dev, 0, 512, "the protective MBR")?;
    if mbr[510..512] != [0x55, 0xAA] {
        return Ok(());
    }
    let entry = |i: usize| 446 + 16 * i;
    let used: Vec<usize> = (0..4).filter(|&i| mbr[entry(i) + 4] != 0).collect();
    if used.len() != 1 || mbr[entry(used[0]) + 4] != MBR_PROTECTIVE || le_u32(&mbr, entry(used[0]) + 8) != 1 {
        return Ok(());
    }
    let want = u32::try_from(total_lbas - 1).unwrap_or(u32::MAX);
    let at = entry(used[0]) + 12;
    if le_u32(&mbr, at) == want {
        return Ok(());
    }
    mbr[at..at + 4].copy_from_slice(&want.to_le_bytes());
    pwrite(dev, 0, &mbr, "the protective MBR")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::path::Path;
    use std::process::{Command, Stdio};

    const MIB: u64 = 1 << 20;

    fn have(tool: &str) -> bool {
        Command::new("sh")
            .arg("-c")
            .arg(format!("command -v {tool}"))
            .output()
            .is_ok_and(|o| o.status.success())
    }

    fn sfdisk(path: &Path, script: &str) {
        let mut child = Command::new("sfdisk")
            .args(["--quiet", "--no-reread", "--no-tell-kernel"])
            .arg(path)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .expect("run sfdisk");
        child.stdin.take().unwrap().write_all(script.as_bytes()).unwrap();
        assert!(child.wait().unwrap().success(), "sfdisk failed on {script}");
    }

    /// An 8 MiB GPT image made by sfdisk: 2 MiB ESP and a Linux root.
    fn sfdisk_gpt_image(dir: &Path) -> Option<std::path::PathBuf> {
        if !have("sfdisk") {
            println!("skipping: sfdisk is not installed");
            return None;
        }
        let p = dir.join("gpt.img");
        File::create(&p).unwrap().set_len(8 * MIB).unwrap();
        sfdisk(
            &p,
            "label: gpt\n\
             label-id: 11111111-2222-3333-4444-555555555555\n\
             start=2048, size=4096, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, name=ESP, attrs=LegacyBIOSBootable\n\
             start=6144, type=4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709, name=root\n",
        );
        Some(p)
    }

    fn head_of(p: &Path) -> Vec<u8> {
        let data = std::fs::read(p).unwrap();
        data[..data.len().min(MIB as usize)].to_vec()
    }

    #[test]
    fn reads_gpt_made_by_sfdisk() {
        let dir = tempfile::tempdir().unwrap();
        let Some(p) = sfdisk_gpt_image(dir.path()) else { return };
        let t = read_table(&head_of(&p)).unwrap().expect("a table");
        assert_eq!(t.kind, TableKind::Gpt);
        assert_eq!(t.sector_size, 512);
        assert_eq!(t.disk_guid.as_deref(), Some("11111111-2222-3333-4444-555555555555"));
        assert_eq!(t.partitions.len(), 2);
        let esp = &t.partitions[0];
        assert_eq!((esp.number, esp.start_bytes, esp.size_bytes), (1, MIB, 2 * MIB));
        assert_eq!(esp.type_id, "C12A7328-F81F-11D2-BA4B-00A0C93EC93B");
        assert_eq!(esp.type_name.as_deref(), Some("EFI System"));
        assert_eq!(esp.label.as_deref(), Some("ESP"));
        assert!(esp.bootable);
        assert_eq!(esp.guid.as_ref().unwrap().len(), 36);
        let root = &t.partitions[1];
        assert_eq!(root.number, 2);
        assert_eq!(root.start_bytes, 3 * MIB);
        assert_eq!(root.type_name.as_deref(), Some("Linux root (x86-64)"));
        assert!(!root.bootable);
        let g = t.gpt.as_ref().unwrap();
        let last_lba = 8 * MIB / 512 - 1;
        assert_eq!(g.backup_lba, last_lba);
        assert_eq!((g.entries_lba, g.num_entries, g.entry_size), (2, 128, 128));
        // sfdisk keeps the first MiB for alignment; older versions said 34.
        assert!((34..=2048).contains(&g.first_usable_lba), "{g:?}");
        assert_eq!(g.last_usable_lba, last_lba - 33);
        assert!(root.start_bytes + root.size_bytes <= (g.last_usable_lba + 1) * 512);
        assert_eq!(t.span_bytes(), root.start_bytes + root.size_bytes);
        let json = serde_json::to_value(&t).unwrap();
        assert_eq!(json["kind"], "gpt");
        assert_eq!(json["partitions"][1]["type_id"], "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709");
    }

    /// A GPT on 4096-byte sectors, written by the gpt crate.
    #[test]
    fn reads_gpt_with_4k_sectors() {
        let lb = gpt::disk::LogicalBlockSize::Lb4096;
        let mut dev = Cursor::new(vec![0u8; 4 * MIB as usize]);
        gpt::mbr::ProtectiveMBR::with_lb_size(u32::try_from(4 * MIB / 4096 - 1).unwrap())
            .overwrite_lba0(&mut dev)
            .unwrap();
        let mut disk = gpt::GptConfig::new()
            .writable(true)
            .logical_block_size(lb)
            .create_from_device(&mut dev, None)
            .unwrap();
        disk.add_partition("data", MIB, gpt::partition_types::LINUX_FS, 0, None).unwrap();
        disk.write().unwrap();
        let image = dev.into_inner();
        let t = read_table(&image[..MIB as usize]).unwrap().unwrap();
        assert_eq!((t.kind, t.sector_size), (TableKind::Gpt, 4096));
        assert_eq!(t.partitions.len(), 1);
        let p = &t.partitions[0];
        assert_eq!(p.size_bytes, MIB);
        assert_eq!(p.start_bytes % 4096, 0);
        assert_eq!(p.type_name.as_deref(), Some("Linux filesystem"));
        assert_eq!(p.label.as_deref(), Some("data"));
    }

    #[test]
    fn reads_mbr_made_by_mbrman() {
        let mut dev = Cursor::new(vec![0u8; 8 * MIB as usize]);
        let mut mbr = mbrman::MBR::new_from(&mut dev, 512, [0x78, 0x56, 0x34, 0x12]).unwrap();
        mbr[1] = mbrman::MBRPartitionEntry {
            boot: mbrman::BOOT_ACTIVE,
            first_chs: mbrman::CHS::empty(),
            sys: 0x0c,
            last_chs: mbrman::CHS::empty(),
            starting_lba: 2048,
            sectors: 4096,
        };
        mbr[2] = mbrman::MBRPartitionEntry {
            boot: mbrman::BOOT_INACTIVE,
            first_chs: mbrman::CHS::empty(),
            sys: 0x83,
            last_chs: mbrman::CHS::empty(),
            starting_lba: 6144,
            sectors: 8192,
        };
        mbr.write_into(&mut dev).unwrap();
        let image = dev.into_inner();
        let t = read_table(&image[..MIB as usize]).unwrap().unwrap();
        assert_eq!(t.kind, TableKind::Mbr);
        assert_eq!(t.disk_guid.as_deref(), Some("12345678"));
        assert!(t.gpt.is_none());
        let p = &t.partitions;
        assert_eq!(p.len(), 2);
        assert_eq!((p[0].number, p[0].start_bytes, p[0].size_bytes), (1, MIB, 2 * MIB));
        assert_eq!((p[0].type_id.as_str(), p[0].type_name.as_deref()), ("0x0c", Some("W95 FAT32 (LBA)")));
        assert!(p[0].bootable);
        assert_eq!(
            (p[1].number, p[1].type_id.as_str(), p[1].type_name.as_deref()),
            (2, "0x83", Some("Linux"))
        );
        assert!(!p[1].bootable);
        assert_eq!(t.span_bytes(), (6144 + 8192) * 512);
    }

    #[test]
    fn reads_mbr_logical_partitions_made_by_sfdisk() {
        if !have("sfdisk") {
            println!("skipping: sfdisk is not installed");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("dos.img");
        File::create(&p).unwrap().set_len(8 * MIB).unwrap();
        sfdisk(&p, "label: dos\nstart=2048, size=2048, type=83\nstart=4096, type=5\nstart=6144, size=2048, type=82\n");
        let t = read_table(&std::fs::read(&p).unwrap()).unwrap().unwrap();
        let got: Vec<(u32, &str)> = t.partitions.iter().map(|p| (p.number, p.type_id.as_str())).collect();
        assert_eq!(got, vec![(1, "0x83"), (2, "0x05"), (5, "0x82")]);
        assert_eq!(t.span_bytes(), 8 * MIB);
        // The first EBR sits at 2 MiB: a 1 MiB head still yields the primaries,
        // and the extended container still bounds the span.
        let t = read_table(&head_of(&p)).unwrap().unwrap();
        assert_eq!(t.partitions.len(), 2);
        assert_eq!(t.span_bytes(), 8 * MIB);
        let t = read_table(&std::fs::read(&p).unwrap()).unwrap().unwrap();
        assert_eq!(t.partitions[2].start_bytes, 6144 * 512);
        assert_eq!(t.partitions[2].type_name.as_deref(), Some("Linux swap"));
    }

    #[test]
    fn no_table() {
        assert!(read_table(&[0u8; 4096]).unwrap().is_none());
        assert!(read_table(b"short").unwrap().is_none());
        // A FAT boot sector: 55 AA but a jump instruction and BPB, not a table.
        let mut fat = vec![0u8; 512];
        fat[..3].copy_from_slice(&[0xEB, 0x3C, 0x90]);
        fat[446..462].copy_from_slice(&[
            0x33, 0xC0, 0x8E, 0xD0, 0xBC, 0, 0x7C, 0xFB, 0x50, 7, 0x50, 0x1F, 0xFC, 0xBE, 0x1B, 0x7C,
        ]);
        fat[510..].copy_from_slice(&[0x55, 0xAA]);
        assert!(read_table(&fat).unwrap().is_none());
    }

    #[test]
    fn damaged_gpt_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let Some(p) = sfdisk_gpt_image(dir.path()) else { return };
        let mut head = head_of(&p);
        head[512 + 40] ^= 1; // first usable LBA, covered by the header CRC
        let err = read_table(&head).unwrap_err();
        assert!(err.to_string().contains("primary GPT header"), "{err}");

        let mut head = head_of(&p);
        head[1024 + 56] ^= 1; // a byte of entry 1's name, covered by the entries CRC
        let err = read_table(&head).unwrap_err();
        assert!(err.to_string().contains("entries"), "{err}");

        let head = head_of(&p);
        let err = read_table(&head[..1500]).unwrap_err();
        assert!(err.to_string().contains("beyond"), "{err}");
    }

    fn grow_copy(src: &Path, dst: &Path, size: u64) -> File {
        std::fs::copy(src, dst).unwrap();
        let f = std::fs::OpenOptions::new().read(true).write(true).open(dst).unwrap();
        f.set_len(size).unwrap();
        f
    }

    #[test]
    fn relocates_backup_to_end_of_larger_disk() {
        let dir = tempfile::tempdir().unwrap();
        let Some(img) = sfdisk_gpt_image(dir.path()) else { return };
        let before = read_table(&head_of(&img)).unwrap().unwrap();
        let disk = dir.path().join("disk.img");
        let size = 20 * MIB;
        let f = grow_copy(&img, &disk, size);
        assert!(relocate_gpt_backup(&f, size, 512).unwrap());
        assert!(!relocate_gpt_backup(&f, size, 512).unwrap(), "second run is a no-op");

        let last = size / 512 - 1;
        let g = gpt::GptConfig::new().writable(false).only_valid_headers(true).open(&disk).unwrap();
        let (h1, h2) = (g.primary_header().unwrap(), g.backup_header().unwrap());
        assert_eq!((h1.current_lba, h1.backup_lba), (1, last));
        assert_eq!((h2.current_lba, h2.backup_lba), (last, 1));
        assert_eq!(h1.last_usable, last - 33);
        assert_eq!(h2.part_start, last - 32);
        assert_eq!(h1.last_usable, h2.last_usable);
        assert_eq!(g.partitions().len(), 2);

        let after = read_table(&head_of(&disk)).unwrap().unwrap();
        assert_eq!(after.partitions, before.partitions);
        assert_eq!(after.disk_guid, before.disk_guid);

        // The old backup header at the image's last sector is gone.
        let data = std::fs::read(&disk).unwrap();
        let old = (8 * MIB - 512) as usize;
        assert!(data[old..old + 512].iter().all(|&b| b == 0));
        // The protective MBR now covers the whole disk.
        assert_eq!(le_u32(&data, 446 + 12) as u64, last);

        if have("sgdisk") {
            let out = Command::new("sgdisk").arg("-v").arg(&disk).output().unwrap();
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(out.status.success() && text.contains("No problems found"), "sgdisk -v: {text}");
        } else {
            println!("sgdisk not installed: skipping its verification");
        }
    }

    #[test]
    fn relocation_leaves_non_gpt_disks_alone() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("zeros.img");
        let f = File::options().read(true).write(true).create(true).truncate(true).open(&p).unwrap();
        f.set_len(4 * MIB).unwrap();
        assert!(!relocate_gpt_backup(&f, 4 * MIB, 512).unwrap());
        assert!(std::fs::read(&p).unwrap().iter().all(|&b| b == 0));
    }

    #[test]
    fn relocation_refuses_a_damaged_primary() {
        let dir = tempfile::tempdir().unwrap();
        let Some(img) = sfdisk_gpt_image(dir.path()) else { return };
        let disk = dir.path().join("disk.img");
        let f = grow_copy(&img, &disk, 16 * MIB);
        f.write_all_at(&[0xFF], 512 + 48).unwrap();
        let err = relocate_gpt_backup(&f, 16 * MIB, 512).unwrap_err();
        assert!(err.to_string().contains("CRC32"), "{err}");

        let f = grow_copy(&img, &disk, 16 * MIB);
        f.write_all_at(&[0xFF], 1024 + 60).unwrap();
        let err = relocate_gpt_backup(&f, 16 * MIB, 512).unwrap_err();
        assert!(err.to_string().contains("entry array"), "{err}");
    }

    #[test]
    fn relocation_refuses_a_disk_smaller_than_the_gpt() {
        let dir = tempfile::tempdir().unwrap();
        let Some(img) = sfdisk_gpt_image(dir.path()) else { return };
        let f = File::options().read(true).write(true).open(&img).unwrap();
        let err = relocate_gpt_backup(&f, 4 * MIB, 512).unwrap_err();
        assert!(err.to_string().contains("does not fit"), "{err}");
    }

    /// An entry array placed past the end of any disk is refused, not
    /// multiplied into an overflow (fuzz/regressions/partition/entries-lba-past-2-pow-64).
    #[test]
    fn relocation_refuses_entries_beyond_the_disk() {
        let dir = tempfile::tempdir().unwrap();
        let Some(img) = sfdisk_gpt_image(dir.path()) else { return };
        let f = grow_copy(&img, &dir.path().join("disk.img"), 16 * MIB);
        let mut hdr = vec![0u8; 512];
        f.read_exact_at(&mut hdr, 512).unwrap();
        hdr[72..80].copy_from_slice(&(1u64 << 60).to_le_bytes());
        let crc = header_crc(&hdr, le_u32(&hdr, 12));
        hdr[16..20].copy_from_slice(&crc.to_le_bytes());
        f.write_all_at(&hdr, 512).unwrap();
        let err = relocate_gpt_backup(&f, 16 * MIB, 512).unwrap_err();
        assert!(err.to_string().contains("beyond the end of the disk"), "{err}");
    }

    /// An EBR whose partition starts 2^32 - 1 sectors after it is a
    /// partition past 2 TiB, not an overflow; a link back to an earlier EBR
    /// ends the chain (fuzz/regressions/partition/ebr-start-past-2-pow-32).
    #[test]
    fn logical_partitions_far_out_and_chains_that_loop() {
        let mut img = vec![0u8; 8 * 512];
        let entry = |img: &mut Vec<u8>, sector: usize, slot: usize, sys: u8, start: u32, sectors: u32| {
            let at = sector * 512 + 446 + 16 * slot;
            img[at + 4] = sys;
            img[at + 8..at + 12].copy_from_slice(&start.to_le_bytes());
            img[at + 12..at + 16].copy_from_slice(&sectors.to_le_bytes());
            img[sector * 512 + 510..sector * 512 + 512].copy_from_slice(&[0x55, 0xAA]);
        };
        entry(&mut img, 0, 0, 0x05, 2, 100);
        entry(&mut img, 2, 0, 0x83, u32::MAX, 10);
        entry(&mut img, 2, 1, 0x05, 3, 10);
        entry(&mut img, 5, 0, 0x82, 1, 4);
        // The second EBR links back to the first.
        entry(&mut img, 5, 1, 0x05, 3, 10);
        let t = read_table(&img).unwrap().unwrap();
        let got: Vec<(u32, u64)> = t.partitions.iter().map(|p| (p.number, p.start_bytes)).collect();
        assert_eq!(got, vec![(1, 2 * 512), (5, (2 + u64::from(u32::MAX)) * 512), (6, 6 * 512)]);
    }
}
