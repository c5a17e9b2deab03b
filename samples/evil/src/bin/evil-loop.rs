//! Misbehaving job: spins forever. The sandbox must stop it at its time limit.

use std::hint::black_box;

fn main() {
    eprintln!("evil-loop: spinning forever");
    let mut x: u64 = 0;
    loop {
        // black_box makes every iteration observable, so the loop cannot be optimised away.
        x = black_box(x.wrapping_add(1));
    }
}
