//! `train`: command-line entry point (being written).

fn main() {
    eprintln!("train: not yet implemented");
    std::process::exit(2);
}
