//! afl-fuzz entry point; the body is [`bty_fuzz::partition`].
fn main() {
    afl::fuzz!(|data: &[u8]| bty_fuzz::partition(data));
}
