// Package oci reads container images for `ember image import`: `docker
// save` archives and OCI image layouts in a tar (OpenArchive), registry
// references (Pull), all through github.com/google/go-containerregistry,
// and flattens their layers into a folder (Unpack) with whiteouts and
// opaque folders applied by mutate.Extract and every write confined to
// the folder (os.Root), bounded by Limits (entries counted in the
// layers' tars themselves, since mutate.Extract records each). Metadata
// read whole (manifests, configs) is bounded by maxMetadataBytes before
// go-containerregistry reads it. ConfigOf reads the Env, WorkingDir and
// User that apply to commands run in the image's VMs.
package oci
