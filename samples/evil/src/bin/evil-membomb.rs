//! Misbehaving job: allocates memory without end (16 MiB blocks, every byte written, all kept).
//! The sandbox must stop it at its memory limit.

use std::hint::black_box;

const BLOCK: usize = 16 << 20;

fn main() {
    let mut blocks: Vec<Vec<u8>> = Vec::new();
    loop {
        // vec![x; n] with x != 0 writes every byte, so the pages are really touched.
        let block = vec![0xA5u8; BLOCK];
        blocks.push(black_box(block));
        let held = blocks.len() * BLOCK;
        if held.is_multiple_of(256 << 20) {
            eprintln!("evil-membomb: holding {} MiB", held >> 20);
        }
        black_box(&mut blocks);
    }
}
