# Sourced on the GPU machine from the repository root: the environment that runs the OpenMPI staged
# under .device/ompi (tools/device/run_nccl.sh stage) from there (OPAL_PREFIX and friends, PMIx,
# PATH, LD_LIBRARY_PATH with .device/lib and CUDA's), as root, on one node (shared memory and the
# self loop), with NVLink multicast kept off (KINDS.md).
dev=${dev:-.device}
ompi=${ompi:-$dev/ompi}
root=$PWD/$ompi/usr
export OPAL_PREFIX=$root OPAL_EXEC_PREFIX=$root OPAL_BINDIR=$root/bin
export OPAL_LIBDIR=$root/lib/x86_64-linux-gnu/openmpi/lib
export OPAL_PKGLIBDIR=$OPAL_LIBDIR/openmpi3 OPAL_DATADIR=$root/share OPAL_PKGDATADIR=$root/share/openmpi
export OPAL_SYSCONFDIR=$PWD/$ompi/etc/openmpi
export PMIX_INSTALL_PREFIX=$root/lib/x86_64-linux-gnu/pmix2
export PMIX_MCA_mca_base_component_path=$root/lib/x86_64-linux-gnu/pmix2/lib/pmix
export PATH=$root/bin:$PATH
export LD_LIBRARY_PATH=$PWD/$dev/lib:$OPAL_LIBDIR:$root/lib/x86_64-linux-gnu/pmix2/lib:/usr/local/cuda/lib64
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_btl=self,vader
export NCCL_NVLS_ENABLE=0 KOKKOS_DISABLE_WARNINGS=1
unset TEST_PREMATURE_EXIT_FILE
