//! afl-fuzz entry point; the body is [`bty_fuzz::simg`].
fn main() {
    afl::fuzz!(|data: &[u8]| bty_fuzz::simg(data));
}
