mod canon;
