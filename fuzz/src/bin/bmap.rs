//! afl-fuzz entry point; the body is [`bty_fuzz::bmap`].
fn main() {
    afl::fuzz!(|data: &[u8]| bty_fuzz::bmap(data));
}
