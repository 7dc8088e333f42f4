//! afl-fuzz entry point; the body is [`bty_fuzz::tftp`].
fn main() {
    afl::fuzz!(|data: &[u8]| bty_fuzz::tftp(data));
}
