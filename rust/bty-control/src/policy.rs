//! Boot policies and the per-machine state machine, as pure functions.
//!
//! The operator sets a machine's `policy` (intent); the server keeps its
//! `state` (what it has observed). Every PXE contact, report and re-arm goes
//! through one function here, so the rules live in one place and are tested
//! exhaustively without a server. The invariant everything else rests on: a
//! flash policy never offers the local disk unless the last flash reported
//! done, so a machine never boots a half-written disk.

use std::fmt;

use bty_core::wire::{FlashStatus, PlanMode};

/// What the operator wants this machine to do on network boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Policy {
    /// Live environment with the interactive flasher (default for new MACs).
    Tui,
    /// Flash, boot the local disk once, flash again on the next PXE contact.
    Flash,
    /// Flash, then boot the local disk until re-armed.
    FlashOnce,
    /// Report disks and hardware, then boot the local disk until re-armed.
    Inventory,
    /// Boot the local disk.
    Local,
}

impl Policy {
    pub const ALL: [Policy; 5] =
        [Policy::Tui, Policy::Flash, Policy::FlashOnce, Policy::Inventory, Policy::Local];

    pub fn as_str(self) -> &'static str {
        match self {
            Policy::Tui => "tui",
            Policy::Flash => "flash",
            Policy::FlashOnce => "flash-once",
            Policy::Inventory => "inventory",
            Policy::Local => "local",
        }
    }

    pub fn parse(s: &str) -> Option<Policy> {
        Policy::ALL.into_iter().find(|p| p.as_str() == s)
    }

    /// Flash policies need an image and a target disk.
    pub fn flashes(self) -> bool {
        matches!(self, Policy::Flash | Policy::FlashOnce)
    }

    /// The state a (re-)saved binding starts in: saving is how an operator re-arms.
    pub fn armed_state(self) -> BootState {
        match self {
            Policy::Flash | Policy::FlashOnce | Policy::Inventory => BootState::Pending,
            Policy::Tui | Policy::Local => BootState::Idle,
        }
    }
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the server has observed for the current policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BootState {
    /// Nothing to track (`tui`, `local`).
    Idle,
    /// Armed: the next PXE contact starts the work.
    Pending,
    /// The flash live environment was offered; no report yet.
    Flashing,
    /// The last flash reported done.
    Flashed,
    /// The last flash reported failure.
    Failed,
    /// The inventory live environment was offered; no inventory yet.
    Inventorying,
    /// An inventory arrived.
    Inventoried,
}

impl BootState {
    pub const ALL: [BootState; 7] = [
        BootState::Idle,
        BootState::Pending,
        BootState::Flashing,
        BootState::Flashed,
        BootState::Failed,
        BootState::Inventorying,
        BootState::Inventoried,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            BootState::Idle => "idle",
            BootState::Pending => "pending",
            BootState::Flashing => "flashing",
            BootState::Flashed => "flashed",
            BootState::Failed => "failed",
            BootState::Inventorying => "inventorying",
            BootState::Inventoried => "inventoried",
        }
    }

    /// Unknown text (a hand-edited database) reads as `pending`: the safe
    /// reading, since it re-does the work instead of booting an unknown disk.
    pub fn parse_or_pending(s: &str) -> BootState {
        BootState::ALL.into_iter().find(|b| b.as_str() == s).unwrap_or(BootState::Pending)
    }
}

impl fmt::Display for BootState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a PXE contact is served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Offer {
    /// Live environment that flashes the bound image.
    Flash,
    /// Live environment that reports inventory.
    Inventory,
    /// Live environment with the interactive flasher.
    Interactive,
    /// Boot the local disk.
    Local,
}

impl Offer {
    pub fn as_str(self) -> &'static str {
        match self {
            Offer::Flash => "flash",
            Offer::Inventory => "inventory",
            Offer::Interactive => "interactive",
            Offer::Local => "local",
        }
    }

    pub fn plan_mode(self) -> PlanMode {
        match self {
            Offer::Flash => PlanMode::Flash,
            Offer::Inventory => PlanMode::Inventory,
            Offer::Interactive => PlanMode::Interactive,
            Offer::Local => PlanMode::Local,
        }
    }
}

/// Does the bound image exist in the catalog right now?
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageCheck {
    Present,
    Missing,
}

/// The outcome of a PXE contact.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub offer: Offer,
    pub next_state: BootState,
    /// Operator-facing explanation (audit log, iPXE echo).
    pub reason: &'static str,
    /// A new flash attempt starts with this offer (flash history row).
    pub starts_flash: bool,
    /// The previous attempt never reported: it is abandoned.
    pub abandons_flash: bool,
}

fn decision(offer: Offer, next_state: BootState, reason: &'static str) -> Decision {
    Decision { offer, next_state, reason, starts_flash: false, abandons_flash: false }
}

/// A PXE contact (`GET /pxe/{mac}`).
pub fn on_pxe(policy: Policy, state: BootState, image: ImageCheck) -> Decision {
    use BootState as S;
    match policy {
        Policy::Tui => decision(Offer::Interactive, state, "policy tui: interactive flasher"),
        Policy::Local => decision(Offer::Local, state, "policy local: boot the local disk"),
        Policy::Flash | Policy::FlashOnce if image == ImageCheck::Missing => decision(
            Offer::Interactive,
            state,
            "the bound image is not in the catalog; offering the interactive flasher instead of flashing",
        ),
        Policy::Flash | Policy::FlashOnce => match state {
            S::Flashed if policy == Policy::Flash => decision(
                Offer::Local,
                S::Pending,
                "flashed: booting the local disk once; the next PXE boot flashes again",
            ),
            S::Flashed => {
                decision(Offer::Local, S::Flashed, "flashed: booting the local disk until re-armed")
            }
            S::Flashing => Decision {
                abandons_flash: true,
                starts_flash: true,
                ..decision(
                    Offer::Flash,
                    S::Flashing,
                    "the previous flash never reported done: flashing again",
                )
            },
            S::Failed => Decision {
                starts_flash: true,
                ..decision(Offer::Flash, S::Flashing, "the previous flash failed: flashing again")
            },
            S::Idle | S::Pending | S::Inventorying | S::Inventoried => {
                Decision { starts_flash: true, ..decision(Offer::Flash, S::Flashing, "flash pending") }
            }
        },
        Policy::Inventory => match state {
            S::Inventoried => decision(
                Offer::Local,
                S::Inventoried,
                "inventory received: booting the local disk until re-armed",
            ),
            S::Inventorying => decision(
                Offer::Inventory,
                S::Inventorying,
                "no inventory arrived after the last offer: offering it again",
            ),
            _ => decision(Offer::Inventory, S::Inventorying, "inventory pending"),
        },
    }
}

/// What `GET /pxe/{mac}/plan` tells the live agent. Read-only: the PXE contact
/// that booted the agent already moved the state.
pub fn plan(policy: Policy, state: BootState, image: ImageCheck) -> (PlanMode, Option<&'static str>) {
    use BootState as S;
    match policy {
        Policy::Tui => (PlanMode::Interactive, None),
        Policy::Local => (PlanMode::Local, None),
        Policy::Flash | Policy::FlashOnce if image == ImageCheck::Missing => {
            (PlanMode::Interactive, Some("the bound image is not in the catalog"))
        }
        Policy::Flash | Policy::FlashOnce => match state {
            S::Flashed => (PlanMode::Local, Some("already flashed; boot the local disk")),
            _ => (PlanMode::Flash, None),
        },
        Policy::Inventory => match state {
            S::Inventoried => (PlanMode::Local, Some("inventory already received")),
            _ => (PlanMode::Inventory, None),
        },
    }
}

/// A report from a live environment (`POST /pxe/{mac}/...`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Report {
    Done,
    Failed,
    Inventory,
    /// The offline provisioning report (cijoe's output), before `done`.
    Provisioning,
}

impl Report {
    pub fn from_status(s: FlashStatus) -> Report {
        match s {
            FlashStatus::Done => Report::Done,
            FlashStatus::Failed => Report::Failed,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Report::Done => "done",
            Report::Failed => "failed",
            Report::Inventory => "inventory",
            Report::Provisioning => "provisioning",
        }
    }
}

/// What a report carrying the current offer's token does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReportVerdict {
    /// Store it; the machine moves to `next_state`, and the offer ends when
    /// `ends_offer` (its token is then worthless).
    Accept { next_state: BootState, ends_offer: bool },
    /// The report does not belong to the offer: nothing changes.
    Refuse(&'static str),
}

/// A report from the live environment that `offer` booted. Only a flash
/// offer can mark a machine flashed: a done from the interactive flasher is
/// history, never a reason to skip the flash a policy asks for.
pub fn on_report(policy: Policy, state: BootState, offer: Offer, report: Report) -> ReportVerdict {
    use ReportVerdict::{Accept, Refuse};
    match (offer, report) {
        (Offer::Flash, Report::Done) if policy.flashes() => {
            Accept { next_state: BootState::Flashed, ends_offer: true }
        }
        (Offer::Flash, Report::Failed) if policy.flashes() => {
            Accept { next_state: BootState::Failed, ends_offer: true }
        }
        // Saving a binding ends the outstanding offer, so this is a stored
        // state bty-web did not write; it decides nothing.
        (Offer::Flash, Report::Done | Report::Failed) => {
            Refuse("the machine's policy no longer flashes; the report was not applied")
        }
        // The flash agent reports the disks before it flashes.
        (Offer::Flash, Report::Inventory) => Accept { next_state: state, ends_offer: false },
        (Offer::Inventory, Report::Inventory) => {
            let next_state = if policy == Policy::Inventory { BootState::Inventoried } else { state };
            Accept { next_state, ends_offer: true }
        }
        (Offer::Inventory, Report::Done | Report::Failed) => {
            Refuse("this boot was offered an inventory, not a flash")
        }
        // The interactive flasher may fail and try again in the same boot;
        // a success ends its offer.
        (Offer::Interactive, Report::Done) => Accept { next_state: state, ends_offer: true },
        (Offer::Interactive, Report::Failed | Report::Inventory) => {
            Accept { next_state: state, ends_offer: false }
        }
        (Offer::Local, _) => {
            Refuse("the machine was told to boot its local disk; no live environment was offered")
        }
        // Judged by `pxe::admit_provisioning`; it never moves the state.
        (_, Report::Provisioning) => Accept { next_state: state, ends_offer: false },
    }
}

/// Whether `offer` starts a live environment, and so mints a token.
pub fn is_live(offer: Offer) -> bool {
    offer != Offer::Local
}

/// The machine's situation in the operator's words (machine list and page).
pub fn describe(policy: Policy, state: BootState) -> &'static str {
    use BootState as S;
    match (policy, state) {
        (Policy::Tui, _) => "interactive flasher on next boot",
        (Policy::Local, _) => "booting local disk",
        (Policy::Flash | Policy::FlashOnce, S::Pending | S::Idle) => "pending flash",
        (Policy::Flash | Policy::FlashOnce, S::Flashing) => "live env running; awaiting flash",
        (Policy::Flash, S::Flashed) => "flashed; booting disk once, then flashing again",
        (Policy::FlashOnce, S::Flashed) => "flashed; booting disk",
        (Policy::Flash | Policy::FlashOnce, S::Failed) => "flash failed; flashing again on next boot",
        (Policy::Inventory, S::Pending | S::Idle) => "pending inventory",
        (Policy::Inventory, S::Inventorying) => "live env running; awaiting inventory",
        (Policy::Inventory, S::Inventoried) => "inventory reported; booting disk",
        (_, S::Inventorying | S::Inventoried) => "pending flash",
        (Policy::Inventory, _) => "pending inventory",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use BootState as S;

    const IMG: ImageCheck = ImageCheck::Present;

    #[test]
    fn names_round_trip() {
        for p in Policy::ALL {
            assert_eq!(Policy::parse(p.as_str()), Some(p));
        }
        for s in BootState::ALL {
            assert_eq!(BootState::parse_or_pending(s.as_str()), s);
        }
        assert_eq!(Policy::parse("bty-flash-always"), None);
        assert_eq!(BootState::parse_or_pending("garbage"), S::Pending);
    }

    /// The safety invariant over every policy x state x image combination.
    #[test]
    fn flash_policies_never_boot_an_unfinished_disk() {
        for p in [Policy::Flash, Policy::FlashOnce] {
            for s in BootState::ALL {
                let d = on_pxe(p, s, IMG);
                if d.offer == Offer::Local {
                    assert_eq!(s, S::Flashed, "{p} in {s} offered local");
                }
                let d = on_pxe(p, s, ImageCheck::Missing);
                assert_eq!(d.offer, Offer::Interactive, "{p} in {s} with a missing image");
                assert_eq!(d.next_state, s, "a missing image must not move the state");
            }
        }
    }

    #[test]
    fn every_policy_and_state() {
        for p in Policy::ALL {
            for s in BootState::ALL {
                let d = on_pxe(p, s, IMG);
                let want: (Offer, BootState) = match (p, s) {
                    (Policy::Tui, s) => (Offer::Interactive, s),
                    (Policy::Local, s) => (Offer::Local, s),
                    (Policy::Flash, S::Flashed) => (Offer::Local, S::Pending),
                    (Policy::FlashOnce, S::Flashed) => (Offer::Local, S::Flashed),
                    (Policy::Flash | Policy::FlashOnce, _) => (Offer::Flash, S::Flashing),
                    (Policy::Inventory, S::Inventoried) => (Offer::Local, S::Inventoried),
                    (Policy::Inventory, _) => (Offer::Inventory, S::Inventorying),
                };
                assert_eq!((d.offer, d.next_state), want, "{p} in {s}");
                assert_eq!(d.starts_flash, d.offer == Offer::Flash, "{p} in {s}");
                assert_eq!(d.abandons_flash, d.offer == Offer::Flash && s == S::Flashing, "{p} in {s}");
                // The plan agrees with what the PXE contact would boot.
                let (mode, _) = plan(p, d.next_state, IMG);
                if d.offer != Offer::Local {
                    assert_eq!(mode, d.offer.plan_mode(), "{p} in {s}");
                }
            }
        }
    }

    /// Walk a machine through a sequence of events; returns the offers seen.
    fn run(policy: Policy, steps: &[&str]) -> Vec<&'static str> {
        let mut state = policy.armed_state();
        let mut seen = Vec::new();
        let mut last_offer = None;
        for step in steps {
            match *step {
                "pxe" => {
                    let d = on_pxe(policy, state, IMG);
                    seen.push(d.offer.as_str());
                    state = d.next_state;
                    last_offer = Some(d.offer);
                }
                "done" | "failed" | "inventory" => {
                    let report = match *step {
                        "done" => Report::Done,
                        "failed" => Report::Failed,
                        _ => Report::Inventory,
                    };
                    let offer = last_offer.expect("a report follows an offer");
                    if let ReportVerdict::Accept { next_state, .. } = on_report(policy, state, offer, report)
                    {
                        state = next_state;
                    }
                }
                "rearm" => state = policy.armed_state(),
                other => panic!("unknown step {other}"),
            }
        }
        seen
    }

    #[test]
    fn flash_alternates_with_local_boot() {
        let offers = run(Policy::Flash, &["pxe", "done", "pxe", "pxe", "done", "pxe", "pxe"]);
        assert_eq!(offers, ["flash", "local", "flash", "local", "flash"]);
    }

    #[test]
    fn crash_and_failure_are_retried() {
        assert_eq!(
            run(Policy::Flash, &["pxe", "pxe", "pxe", "done", "pxe"]),
            ["flash", "flash", "flash", "local"]
        );
        assert_eq!(
            run(Policy::FlashOnce, &["pxe", "failed", "pxe", "done", "pxe"]),
            ["flash", "flash", "local"]
        );
    }

    #[test]
    fn flash_once_ends_in_local_until_rearmed() {
        let offers =
            run(Policy::FlashOnce, &["pxe", "done", "pxe", "pxe", "pxe", "rearm", "pxe", "done", "pxe"]);
        assert_eq!(offers, ["flash", "local", "local", "local", "flash", "local"]);
    }

    #[test]
    fn inventory_then_local_until_rearmed() {
        let offers = run(Policy::Inventory, &["pxe", "pxe", "inventory", "pxe", "pxe", "rearm", "pxe"]);
        assert_eq!(offers, ["inventory", "inventory", "local", "local", "inventory"]);
    }

    #[test]
    fn reports_do_not_move_non_flash_policies() {
        use ReportVerdict::{Accept, Refuse};
        for p in [Policy::Tui, Policy::Local, Policy::Inventory] {
            for r in [Report::Done, Report::Failed] {
                assert!(matches!(on_report(p, S::Idle, Offer::Flash, r), Refuse(_)), "{p} {r:?}");
            }
        }
        assert_eq!(
            on_report(Policy::Flash, S::Flashing, Offer::Flash, Report::Inventory),
            Accept { next_state: S::Flashing, ends_offer: false }
        );
        assert_eq!(plan(Policy::FlashOnce, S::Flashed, IMG).0, PlanMode::Local);
        assert_eq!(plan(Policy::Flash, S::Pending, ImageCheck::Missing).0, PlanMode::Interactive);
    }

    /// Every report against every offer: only a flash offer's done marks a
    /// machine flashed; inventory and local offers refuse flash reports.
    #[test]
    fn only_a_flash_offer_can_mark_a_machine_flashed() {
        use ReportVerdict::Accept;
        let offers = [Offer::Flash, Offer::Inventory, Offer::Interactive, Offer::Local];
        for p in Policy::ALL {
            for s in BootState::ALL {
                for o in offers {
                    for r in [Report::Done, Report::Failed, Report::Inventory] {
                        let v = on_report(p, s, o, r);
                        if let Accept { next_state, ends_offer } = v {
                            if next_state == S::Flashed && s != S::Flashed {
                                assert_eq!((o, r), (Offer::Flash, Report::Done), "{p} {s} {o:?} {r:?}");
                            }
                            assert!(o != Offer::Local, "{p} {s}: a local offer accepted {r:?}");
                            if o == Offer::Flash && r != Report::Inventory {
                                assert!(ends_offer, "a flash's outcome ends its offer");
                            }
                        }
                        if o == Offer::Inventory && r != Report::Inventory {
                            assert!(matches!(v, ReportVerdict::Refuse(_)));
                        }
                    }
                }
            }
        }
        // An interactive done on a flash policy whose image vanished is history only.
        assert_eq!(
            on_report(Policy::FlashOnce, S::Pending, Offer::Interactive, Report::Done),
            Accept { next_state: S::Pending, ends_offer: true }
        );
    }
}
