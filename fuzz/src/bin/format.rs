//! afl-fuzz entry point; the body is [`bty_fuzz::format`].
fn main() {
    afl::fuzz!(|data: &[u8]| bty_fuzz::format(data));
}
