//! Rebuilds the crate when the web UI's build output changes: src/admin/ui.rs embeds each file
//! of ui/dist/, and cargo would not otherwise notice a file added there.

fn main() {
    println!("cargo:rerun-if-changed=ui/dist");
}
