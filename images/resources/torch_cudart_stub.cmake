# Passed as -DCMAKE_PROJECT_INCLUDE=... by the build stage when a CPU build meets a CUDA torch.
# torch's CMake config (Caffe2) names torch::cudart; on a CPU build there is nothing to link.
if(NOT TARGET torch::cudart)
  add_library(torch::cudart INTERFACE IMPORTED)
endif()
if(NOT TARGET CUDA::cudart)
  add_library(CUDA::cudart INTERFACE IMPORTED)
endif()
